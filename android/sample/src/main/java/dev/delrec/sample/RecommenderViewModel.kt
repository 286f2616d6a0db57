package dev.delrec.sample

import android.app.Application
import android.os.SystemClock
import androidx.lifecycle.AndroidViewModel
import androidx.lifecycle.viewModelScope
import dev.delrec.DelrecException
import dev.delrec.Engine
import dev.delrec.EngineConfig
import dev.delrec.LogLevel
import dev.delrec.ProgressListener
import dev.delrec.RankEvent
import dev.delrec.RankProgress
import dev.delrec.RankRequest
import dev.delrec.Ranking
import dev.delrec.ScoredItem
import dev.delrec.Session
import dev.delrec.android.LogcatSink
import dev.delrec.LoadStage
import dev.delrec.openEngine
import dev.delrec.pushAsync
import dev.delrec.rankAsync
import dev.delrec.rankFlow
import java.io.IOException
import kotlin.coroutines.cancellation.CancellationException
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.Job
import kotlinx.coroutines.cancelAndJoin
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.asStateFlow
import kotlinx.coroutines.flow.update
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext

/** An item as the screen shows it. */
data class Pick(val id: String, val title: String)

data class UiState(
    val status: String = "Starting…",
    /** 0..1 while the model loads. */
    val loadProgress: Float? = null,
    val ready: Boolean = false,
    val catalog: List<Pick> = emptyList(),
    val catalogSize: Long = 0,
    /** The session's history, oldest first. */
    val history: List<Pick> = emptyList(),
    val ranking: List<ScoredItem> = emptyList(),
    /** 0..1 while a ranking runs (null: none runs). */
    val rankProgress: Float? = null,
    val rankInfo: String? = null,
    val error: String? = null,
)

/**
 * The engine lives here, not in the activity: it is opened once, in [viewModelScope], and a
 * rotation (a new activity, the same ViewModel) keeps it. When the screen goes away for good the
 * ViewModel is cleared: viewModelScope is cancelled, which cancels the running ranking through its
 * CancelToken, and [onCleared] closes the session and the engine.
 */
class RecommenderViewModel(app: Application) : AndroidViewModel(app) {
    private val _state = MutableStateFlow(UiState())
    val state: StateFlow<UiState> = _state.asStateFlow()

    private var engine: Engine? = null
    private var session: Session? = null
    private var rankJob: Job? = null

    /** Taps, in order: each one is pushed to the session, then the session is re-ranked. */
    private val taps = Channel<Pick>(Channel.UNLIMITED)

    /** Called on the ranking thread; StateFlow.update is thread-safe. */
    private val rankProgressListener = object : ProgressListener {
        override fun onProgress(progress: RankProgress) {
            _state.update { it.copy(rankProgress = progress.fraction()) }
        }
    }

    init {
        LogcatSink.install(LogLevel.INFO)
        viewModelScope.launch { start() }
    }

    fun onItemTapped(pick: Pick) {
        taps.trySend(pick)
    }

    /** Ranks the whole catalog for the history, with progress from [rankFlow]. */
    fun rankWholeCatalog() {
        val engine = engine ?: return
        val history = _state.value.history.map { it.id }
        if (history.isEmpty()) return
        replaceRanking {
            showRanking("Whole catalog") {
                var done: Ranking? = null
                engine.rankFlow(RankRequest(history = history, topK = TOP_K, excludeHistory = true)).collect { event ->
                    when (event) {
                        is RankEvent.Progress -> _state.update { it.copy(rankProgress = event.progress.fraction()) }
                        is RankEvent.Done -> done = event.ranking
                    }
                }
                done ?: error("rankFlow ended without a ranking")
            }
        }
    }

    fun cancelRanking() {
        rankJob?.cancel()
    }

    /** A live catalog: an item typed by the user, ranked like the pack's own from the next ranking on. */
    fun addItem(title: String) {
        val engine = engine ?: return
        val clean = title.trim()
        if (clean.isEmpty()) return
        val id = "user:" + clean.lowercase().replace(Regex("[^a-z0-9]+"), "-")
        viewModelScope.launch {
            val added = attempt("Adding \"$clean\"") {
                withContext(Dispatchers.Default) { engine.addItem(id, clean) } // tokenizes the title
            } ?: return@launch
            _state.update {
                it.copy(
                    catalog = listOf(Pick(id, clean)) + it.catalog,
                    catalogSize = it.catalogSize + 1,
                    status = "Added \"$clean\" (catalog index ${added.index})",
                )
            }
        }
    }

    private suspend fun start() {
        val app = getApplication<Application>()
        val engine = attempt("Opening the model") {
            val (model, pack) = withContext(Dispatchers.IO) { app.installAsset("model.gguf") to app.installAsset("pack.gguf") }
            _state.update { it.copy(status = "Loading the model…", loadProgress = 0f) }
            // digestCacheDir: the model's verified sha256 is remembered, so later launches skip hashing it.
            val config = EngineConfig(threads = 4, digestCacheDir = app.cacheDir.path)
            // One bar for both stages: the digest check (first launch only) and the load.
            openEngine(model.path, pack.path, config) { stage, f ->
                val overall = if (stage == LoadStage.VERIFY) f / 2 else 0.5f + f / 2
                _state.update { it.copy(loadProgress = overall) }
            }
        }
        _state.update { it.copy(loadProgress = null) }
        if (engine == null) {
            _state.update { it.copy(status = "Could not open the model") }
            return
        }
        this.engine = engine
        // A session holds one of the engine's contexts and keeps the history decoded: after a push,
        // the next ranking decodes only the new item. Opening may wait for a free context.
        val session = attempt("Opening a session") { withContext(Dispatchers.IO) { engine.session(null) } } ?: return
        this.session = session
        val (size, catalog) = withContext(Dispatchers.Default) {
            val size = engine.catalogSize()
            size to (0 until minOf(size, SHOWN).toInt()).map { i -> engine.itemAt(i).let { Pick(it.id, it.title) } }
        }
        _state.update {
            it.copy(status = "Ready: tap items to build a history", ready = true, catalog = catalog, catalogSize = size)
        }

        // Until viewModelScope is cancelled.
        for (pick in taps) {
            rankJob?.cancelAndJoin() // its ranking is for the old history; the session serializes calls
            attempt("Adding ${pick.title} to the history") { session.pushAsync(pick.id) } ?: continue
            _state.update { it.copy(history = it.history + pick) }
            rankJob = viewModelScope.launch {
                showRanking("Session") {
                    session.rankAsync(RankRequest(topK = TOP_K, excludeHistory = true, progress = rankProgressListener))
                }
            }
        }
    }

    /** Cancels the running ranking and starts [block] once it has ended. */
    private fun replaceRanking(block: suspend () -> Unit) {
        val previous = rankJob
        rankJob = viewModelScope.launch {
            previous?.cancelAndJoin()
            block()
        }
    }

    private suspend fun showRanking(label: String, rank: suspend () -> Ranking) {
        val t0 = SystemClock.elapsedRealtime()
        _state.update { it.copy(rankProgress = 0f) }
        try {
            val ranking = attempt("Ranking") { rank() } ?: return
            val ms = SystemClock.elapsedRealtime() - t0
            val s = ranking.stats
            _state.update {
                it.copy(ranking = ranking.items, rankInfo = "$label: ${s.candidates} candidates, ${s.decodedRows} rows decoded, $ms ms")
            }
        } finally {
            _state.update { it.copy(rankProgress = null) }
        }
    }

    /** Runs [block]; shows what failed and returns null. A cancellation is not a failure: it propagates. */
    private suspend fun <T> attempt(what: String, block: suspend () -> T): T? =
        try {
            block().also { _state.update { s -> s.copy(error = null) } }
        } catch (e: CancellationException) {
            throw e // replaced by a newer request, cancelled by the user, or the screen went away
        } catch (e: DelrecException) {
            _state.update { it.copy(error = "$what: ${e.reasonText()}") }
            null
        } catch (e: IOException) {
            _state.update { it.copy(error = "$what: ${e.message}") }
            null
        }

    override fun onCleared() {
        // viewModelScope is already cancelled. close() frees the native objects once calls still in
        // flight have returned (they were cancelled and return soon).
        taps.close()
        session?.close()
        engine?.close()
    }

    private companion object {
        const val TOP_K = 10
        const val SHOWN = 200L // catalog rows listed
    }
}

private fun RankProgress.fraction(): Float =
    if (plannedRows > 0) (decodedRows.toFloat() / plannedRows).coerceIn(0f, 1f) else 0f
