//! [`Base`]: a model opened once and shared by every pack opened over it. The base owns the
//! model (mapped once), the context pool (contexts are lent to whichever pack's call needs one,
//! with that pack's adapter set on them) and the adapters loaded over it, shared by packs that
//! name the same file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};

use delrec_format::adapter::{check_adapter, AdapterInfo, BaseTensors};
use delrec_format::gguf::GgufFile;
use delrec_format::identity::bytes_sha256;
use delrec_format::{BaseIdentity, Pack};

use super::digest::{self, Stamp};
use super::pool::Pool;
use super::{
    backend, memory, rank, BackendInfo, DigestSource, Engine, EngineConfig, FileRange, Inner, LoadStage,
    ModelVerification, OpenOptions,
};
use crate::error::{Error, FileError, Resource, Result};
use crate::llm::{Adapter, Context, ContextParams, Model, ModelParams, TokenEmbeddings};

/// A base model, opened once; [`Base::open_pack`] opens packs over it. A cheap handle (`Clone`,
/// `Send + Sync`): the engines of its packs share its model, its context pool (sized by the
/// config given here) and its adapters, so a second recommender over the same model costs its
/// pack, its adapter and its catalog, not another model and another pool.
///
/// ```no_run
/// use delrec_runtime::{Base, EngineConfig, RankRequest};
/// let base = Base::open("model.q4_0.gguf", EngineConfig::default())?;
/// let movies = base.open_pack("movies.pack.gguf")?; // its adapter beside it, if it names one
/// let music = base.open_pack("music.pack.gguf")?;
/// let req = RankRequest { history: vec!["m001".into()], top_k: Some(10), ..Default::default() };
/// println!("{:?}", movies.rank(&req)?.items.first());
/// # let _ = music;
/// # Ok::<(), delrec_runtime::Error>(())
/// ```
#[derive(Clone)]
pub struct Base {
    pub(super) inner: Arc<BaseInner>,
}

pub(super) struct BaseInner {
    pub model: Arc<Model>,
    pub path: PathBuf,
    pub identity: BaseIdentity,
    tensors: BaseTensors,
    /// The model file's sha256 and where it came from, when `verify_checksum` is on and the
    /// model was not loaded with tensor checks instead.
    digest: Option<(String, DigestSource)>,
    /// A freshly computed digest's stamp, remembered once a pack's pin matches it.
    pending_stamp: Mutex<Option<Stamp>>,
    /// Loaded with llama.cpp's tensor data checks (for a first pack that pins no digest).
    tensor_checks: bool,
    pub cfg: EngineConfig,
    pub pool: Arc<Pool>,
    pub n_ctx: usize,
    pub n_seq_max: usize,
    /// Adapters loaded over this model, by the sha256 of their file.
    adapters: Mutex<HashMap<String, Weak<Adapter>>>,
    /// Encoder-decoder models: the token embeddings, for mixed encoder inputs.
    pub token_embd: Option<Arc<TokenEmbeddings>>,
    pub backend: BackendInfo,
}

impl Base {
    /// Opens a model for packs to be opened over it. With `verify_checksum` (the default) its
    /// sha256 is computed here (once per version of the file, see `digest_cache`), and every
    /// pack must pin it.
    pub fn open(model: impl AsRef<Path>, cfg: EngineConfig) -> Result<Self> {
        Self::open_for(model.as_ref(), cfg, None, &OpenOptions::default())
    }

    /// [`Base::open`] with progress reports and a cancel token ([`OpenOptions`]).
    pub fn open_with(model: impl AsRef<Path>, cfg: EngineConfig, opts: &OpenOptions) -> Result<Self> {
        Self::open_for(model.as_ref(), cfg, None, opts)
    }

    /// Opens the model, for `first` when it is the one pack to come (which decides how the
    /// model is verified: a pack that pins no digest gets llama.cpp's tensor checks).
    pub(super) fn open_for(model: &Path, cfg: EngineConfig, first: Option<&Pack>, opts: &OpenOptions) -> Result<Self> {
        // The model is opened once: our parse, the checks, the digest and llama.cpp all read this
        // descriptor, so a file replaced at the path meanwhile is never loaded unchecked.
        let file = std::fs::File::open(model).map_err(|source| FileError::Io { path: model.into(), source })?;
        Self::open_source(&FileRange::whole(file, model), cfg, first, opts)
    }

    /// Opens a model stored in part of an open file ([`FileRange`]: an APK asset's descriptor,
    /// offset and length), as [`Base::open_with`] does a path.
    pub fn open_range(model: &FileRange, cfg: EngineConfig, opts: &OpenOptions) -> Result<Self> {
        Self::open_source(model, cfg, None, opts)
    }

    pub(super) fn open_source(
        src: &FileRange,
        cfg: EngineConfig,
        first: Option<&Pack>,
        opts: &OpenOptions,
    ) -> Result<Self> {
        rank::validate(&cfg)?;
        if !opts.step(LoadStage::Verify, 0.0) {
            return Err(Error::Cancelled);
        }
        let (file, model) = (&src.file, src.name.as_path());
        // Our own parse first: typed errors for non-GGUF or tokenizer-less files before llama.cpp.
        let gguf = match src.len {
            None => GgufFile::from_file(file, model)?,
            Some(len) => GgufFile::from_file_range(file, model, src.offset, len)?,
        };
        // Every hyperparameter, token and tensor llama.cpp reads, checked: it aborts on hostile ones.
        delrec_format::model_check::check_model(&gguf)?;
        let identity = BaseIdentity::of_model(&gguf)?;
        let tensors = BaseTensors::of_model(&gguf)?;
        // An encoder input that mixes soft rows and text goes to llama.cpp as embedding rows:
        // the text rows are looked up in the model's token table (copied, the map is dropped).
        let token_embd = if delrec_format::pack::is_encoder_decoder(&identity.architecture) {
            Some(Arc::new(TokenEmbeddings::from_gguf(&gguf)?))
        } else {
            None
        };
        if let Some(pack) = first {
            pack.base.check_matches(&identity)?;
        }
        let tensor_checks = cfg.verify_checksum && first.is_some_and(|p| p.model_sha256.is_empty());
        let (digest, stamp) = if cfg.verify_checksum && !tensor_checks {
            let (sum, source, fresh) =
                digest::sha256(file, src.offset, gguf.bytes(), cfg.digest_cache.as_deref(), &mut |f| {
                    opts.step(LoadStage::Verify, f)
                })
                .ok_or(Error::Cancelled)?;
            (Some((sum, source)), fresh)
        } else {
            (None, None)
        };
        if let (Some(pack), Some((sum, _))) = (first, &digest) {
            check_pinned(pack, sum)?;
        }
        drop(gguf);
        let (device, report) = backend::choose(&cfg)?;
        let params = ModelParams {
            device,
            gpu_layers: cfg.gpu_layers,
            check_tensors: tensor_checks,
            repack: cfg.repack_weights,
            ..Default::default()
        };
        let m = Model::load_file_range(file, model, src.offset, params, Some(&mut |f| opts.step(LoadStage::Load, f)))?;
        let backend = report(Some(m.n_layer() as u32));
        if m.has_encoder() != token_embd.is_some() || (m.has_encoder() && m.decoder_start_token().is_none()) {
            return Err(FileError::ModelLoad {
                path: model.to_path_buf(),
                reason: "llama.cpp's view of the encoder (or its decoder start token) disagrees with the file".into(),
            }
            .into());
        }
        // With an encoder llama.cpp sizes the output buffer by n_batch alone and asserts
        // (aborts) at context creation when n_seq_max exceeds it.
        if m.has_encoder() && cfg.max_sequences > cfg.batch_size.min(cfg.context_size) {
            return Err(Error::invalid(
                "max_sequences",
                format!(
                    "{} exceeds batch_size {}: an encoder-decoder model needs max_sequences ≤ batch_size",
                    cfg.max_sequences,
                    cfg.batch_size.min(cfg.context_size)
                ),
            ));
        }
        let n_embd = identity.n_embd as usize;
        if m.n_embd() != n_embd || m.n_embd_inp() != n_embd || m.n_vocab() != identity.n_vocab as usize {
            return Err(FileError::Mismatch {
                field: "llama.cpp's view of n_embd/input width/vocabulary".into(),
                pack: format!("{n_embd}/{n_embd}/{}", identity.n_vocab),
                model: format!("{}/{}/{}", m.n_embd(), m.n_embd_inp(), m.n_vocab()),
            }
            .into());
        }
        let threads = if cfg.threads == 0 { crate::cpus::default_threads() } else { cfg.threads };
        let params = ContextParams {
            n_ctx: cfg.context_size,
            n_batch: cfg.batch_size.min(cfg.context_size),
            n_seq_max: cfg.max_sequences,
            n_outputs: cfg.max_outputs,
            threads: threads as i32,
            kv_type: cfg.kv_type,
            flash_attention: cfg.flash_attention,
        };
        if let Some(limit) = cfg.memory_limit {
            let table = token_embd.as_ref().map_or(0, |t| t.byte_len());
            let need =
                memory::budget(&m, first, table, &cfg, memory::n_ctx_of(&cfg), u64::from(cfg.max_sequences)).total();
            if need > limit {
                return Err(Error::Capacity { resource: Resource::Memory, needed: need, available: limit });
            }
        }
        let path = model.to_path_buf();
        let model = Arc::new(m);
        let pool = Pool::new(model.clone(), params, cfg.max_contexts, cfg.context_wait);
        // Create one context now: configuration errors surface at open, not at the first rank.
        let (n_ctx, n_seq_max) = {
            let mut lease = pool.acquire(None)?;
            let ctx: &mut Context = lease.ctx();
            (ctx.n_ctx(), ctx.n_seq_max())
        };
        Ok(Base {
            inner: Arc::new(BaseInner {
                model,
                path,
                identity,
                tensors,
                digest,
                pending_stamp: Mutex::new(stamp),
                tensor_checks,
                cfg,
                pool,
                n_ctx,
                n_seq_max,
                adapters: Mutex::default(),
                token_embd,
                backend,
            }),
        })
    }

    /// Opens a pack over this base. A pack that names an adapter gets it from the pack's
    /// directory (see [`Base::open_pack_with_adapter`] for another place).
    pub fn open_pack(&self, pack: impl AsRef<Path>) -> Result<Engine> {
        let pack = Pack::open(pack.as_ref())?;
        let adapter = adapter_beside(&pack);
        self.engine(pack, adapter.as_deref())
    }

    /// Opens a pack whose adapter file is at `adapter` (an app that keeps files apart, or a
    /// downloaded update). The file must still be the one the pack pins.
    pub fn open_pack_with_adapter(&self, pack: impl AsRef<Path>, adapter: impl AsRef<Path>) -> Result<Engine> {
        let pack = Pack::open(pack.as_ref())?;
        if pack.adapter.is_none() {
            return Err(Error::invalid("adapter", "the pack names no adapter"));
        }
        self.engine(pack, Some(adapter.as_ref()))
    }

    pub(super) fn engine(&self, pack: Pack, adapter_path: Option<&Path>) -> Result<Engine> {
        let b = &*self.inner;
        pack.base.check_matches(&b.identity)?;
        let verification = if !b.cfg.verify_checksum {
            ModelVerification::Skipped
        } else if b.tensor_checks {
            ModelVerification::TensorChecks
        } else {
            let (sum, source) = b.digest.as_ref().ok_or_else(|| Error::internal("verified base without a digest"))?;
            check_pinned(&pack, sum)?;
            if let Some(stamp) = b.pending_stamp.lock().unwrap_or_else(|e| e.into_inner()).take() {
                digest::remember(&stamp, sum, b.cfg.digest_cache.as_deref());
            }
            ModelVerification::Digest(*source)
        };
        let adapter = match (&pack.adapter, adapter_path) {
            (Some(r), Some(path)) => {
                let (a, info) = self.load_adapter(path, &r.sha256)?;
                Some(LoadedAdapter { adapter: a, scale: r.scale, info, path: path.to_path_buf() })
            }
            _ => None,
        };
        if let Some(limit) = b.cfg.memory_limit {
            let table = b.token_embd.as_ref().map_or(0, |t| t.byte_len());
            let extra = adapter.as_ref().map_or(0, |a| a.info.tensor_bytes) + table;
            let need = memory::budget(&b.model, Some(&pack), extra, &b.cfg, b.n_ctx as u64, b.n_seq_max as u64).total();
            if need > limit {
                return Err(Error::Capacity { resource: Resource::Memory, needed: need, available: limit });
            }
        }
        let soft =
            (0..pack.soft_prompts.len()).filter_map(|i| pack.soft_prompt_values(i).map(<[f32]>::to_vec)).collect();
        Ok(Engine {
            inner: Arc::new(Inner {
                base: self.clone(),
                model: b.model.clone(),
                pack,
                soft,
                adapter,
                cfg: b.cfg.clone(),
                pool: b.pool.clone(),
                added: RwLock::default(),
                n_ctx: b.n_ctx,
                n_seq_max: b.n_seq_max,
                verification,
            }),
        })
    }

    /// The adapter at `path`, which must hash to `sha256` and fit this model; loaded once per
    /// file while any pack uses it.
    fn load_adapter(&self, path: &Path, sha256: &str) -> Result<(Arc<Adapter>, AdapterInfo)> {
        let b = &*self.inner;
        // One descriptor: the bytes hashed and checked are the bytes llama.cpp reads.
        let file = std::fs::File::open(path).map_err(|source| FileError::Io { path: path.into(), source })?;
        let gguf = GgufFile::from_file(&file, path)?;
        let sum = bytes_sha256(gguf.bytes());
        if sum != sha256 {
            return Err(
                FileError::Mismatch { field: "adapter file sha256".into(), pack: sha256.into(), model: sum }.into()
            );
        }
        let info = check_adapter(&gguf, &b.tensors, &b.identity)?;
        drop(gguf);
        let mut cache = b.adapters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = cache.get(&sum).and_then(Weak::upgrade) {
            return Ok((a, info));
        }
        let a = Arc::new(Adapter::load_file(&b.model, &file, path)?);
        cache.retain(|_, w| w.strong_count() > 0);
        cache.insert(sum, Arc::downgrade(&a));
        Ok((a, info))
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.inner.model
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.cfg
    }

    /// What the model runs on (see [`EngineConfig::backend`]).
    pub fn backend(&self) -> &BackendInfo {
        &self.inner.backend
    }

    /// The model file this base was opened from.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Adapters loaded over the model and in use by some pack.
    pub fn adapters_loaded(&self) -> usize {
        let cache = self.inner.adapters.lock().unwrap_or_else(|e| e.into_inner());
        cache.values().filter(|w| w.strong_count() > 0).count()
    }
}

/// An engine's adapter: what llama.cpp applies in its calls, and what the checks found.
pub(super) struct LoadedAdapter {
    pub adapter: Arc<Adapter>,
    pub scale: f32,
    pub info: AdapterInfo,
    pub path: PathBuf,
}

/// Where a pack's adapter is by default: beside the pack, under the name it pins.
pub(super) fn adapter_beside(pack: &Pack) -> Option<PathBuf> {
    pack.adapter.as_ref().map(|a| pack.path().parent().unwrap_or(Path::new("")).join(&a.file))
}

fn check_pinned(pack: &Pack, sum: &str) -> Result<()> {
    if pack.model_sha256.iter().any(|p| p == sum) {
        return Ok(());
    }
    let pinned = if pack.model_sha256.is_empty() {
        "none pinned (a shared base verifies models by digest)".to_string()
    } else {
        pack.model_sha256.join(" | ")
    };
    Err(FileError::Mismatch { field: "model file sha256".into(), pack: pinned, model: sum.into() }.into())
}
