"""Only what pyproject.toml cannot say: the wheel carries a native library, so it is tagged for
this platform and Python (not `py3-none-any`), and it is not built without the generated files."""

from pathlib import Path

from setuptools import setup
from setuptools.dist import Distribution

PKG = Path(__file__).resolve().parent / "delrec"
for name in ("delrec_ffi.py", "libdelrec_ffi.so"):
    if not (PKG / name).is_file() and not (name.endswith(".so") and (PKG / "libdelrec_ffi.dylib").is_file()):
        raise SystemExit(f"{PKG / name} is missing: run `bash bindings/python/build.sh` (it generates it)")


class BinaryDistribution(Distribution):
    def has_ext_modules(self):
        return True


setup(distclass=BinaryDistribution)
