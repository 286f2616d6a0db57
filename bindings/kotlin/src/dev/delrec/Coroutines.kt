// Coroutine API over the generated bindings (hand-written; compiled with them on the JVM and in
// the Android library). The generated calls block: llama.cpp decodes on the calling thread. These
// run them on a dispatcher the caller chooses, and tie coroutine cancellation to the engine's
// CancelToken, so that cancelling the coroutine (a closed screen's viewModelScope, a timeout)
// stops the decode loop within one decode.
@file:JvmName("DelrecCoroutines")

package dev.delrec

import java.util.concurrent.atomic.AtomicReference
import kotlinx.coroutines.CancellationException
import kotlinx.coroutines.CoroutineDispatcher
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.NonCancellable
import kotlinx.coroutines.async
import kotlinx.coroutines.coroutineScope
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.channelFlow
import kotlinx.coroutines.withContext

/**
 * Runs the blocking [block] on [dispatcher]. Cancelling the calling coroutine cancels [token] (the
 * engine then stops at its next check) and waits for [block] to return, so nothing of the call is
 * still running when this returns; a result [block] made anyway goes to [abandoned]. The engine's
 * `Cancelled` becomes a [CancellationException] (its cause).
 */
internal suspend fun <T> runCancellable(
    dispatcher: CoroutineDispatcher,
    token: CancelToken,
    abandoned: (T) -> Unit = {},
    block: () -> T,
): T = coroutineScope {
    val made = AtomicReference<T?>(null)
    // The child never fails (its outcome is a value): a failed child would fail this scope with
    // its own exception, and the engine's Cancelled could not become a CancellationException.
    val work = async(dispatcher) { runCatching { block().also { made.set(it) } } }
    val outcome = try {
        work.await()
    } catch (e: CancellationException) {
        token.cancel()
        withContext(NonCancellable) { work.join() }
        made.get()?.let(abandoned)
        throw e
    }
    outcome.getOrElse { e ->
        throw if (e is DelrecException.Cancelled) CancellationException(e.reason, e) else e
    }
}

/** The request's own token, or a new one put into it. */
private fun RankRequest.withToken(): Pair<RankRequest, CancelToken> =
    cancel?.let { this to it } ?: CancelToken().let { copy(cancel = it) to it }

private fun RecommendRequest.withToken(): Pair<RecommendRequest, CancelToken> =
    cancel?.let { this to it } ?: CancelToken().let { copy(cancel = it) to it }

/**
 * Opens an engine on [dispatcher], reporting the digest check and llama.cpp's load to
 * [onProgress] (on the loading thread). Cancelling the coroutine stops the open.
 */
suspend fun openEngine(
    modelPath: String,
    packPath: String,
    config: EngineConfig = EngineConfig(),
    dispatcher: CoroutineDispatcher = Dispatchers.IO,
    onProgress: (LoadStage, Float) -> Unit = { _, _ -> },
): Engine {
    val listener = object : LoadListener {
        override fun onLoadProgress(stage: LoadStage, fraction: Float) = onProgress(stage, fraction)
    }
    return runCancellableOpen(dispatcher) { token -> Engine.openWithProgress(modelPath, packPath, config, listener, token) }
}

/**
 * Runs a blocking open ([open] gets the token to pass to the engine) on [dispatcher]: cancelling
 * the coroutine stops it, and an engine it opened anyway is closed.
 */
suspend fun runCancellableOpen(dispatcher: CoroutineDispatcher, open: (CancelToken) -> Engine): Engine {
    val token = CancelToken()
    return runCancellable(dispatcher, token, abandoned = { it.close() }) { open(token) }
}

/** [Engine.rank] on [dispatcher]; cancelling the coroutine cancels the ranking. */
suspend fun Engine.rankAsync(request: RankRequest, dispatcher: CoroutineDispatcher = Dispatchers.Default): Ranking {
    val (req, token) = request.withToken()
    return runCancellable(dispatcher, token) { rank(req) }
}

/** [Engine.recommend] on [dispatcher]; cancelling the coroutine cancels it. */
suspend fun Engine.recommendAsync(
    request: RecommendRequest,
    dispatcher: CoroutineDispatcher = Dispatchers.Default,
): Recommendation {
    val (req, token) = request.withToken()
    return runCancellable(dispatcher, token) { recommend(req) }
}

/** [Session.rank] on [dispatcher]; cancelling the coroutine cancels the ranking. */
suspend fun Session.rankAsync(request: RankRequest, dispatcher: CoroutineDispatcher = Dispatchers.Default): Ranking {
    val (req, token) = request.withToken()
    return runCancellable(dispatcher, token) { rank(req) }
}

/** [Session.recommend] on [dispatcher]; cancelling the coroutine cancels it. */
suspend fun Session.recommendAsync(
    request: RecommendRequest,
    dispatcher: CoroutineDispatcher = Dispatchers.Default,
): Recommendation {
    val (req, token) = request.withToken()
    return runCancellable(dispatcher, token) { recommend(req) }
}

/**
 * [Session.push] off the caller's thread (it waits for the session's lock). With [eager], the new
 * history is decoded right away ([Session.prefill] for requests shaped like [request]), so the
 * next rank decodes only candidate rows; cancelling the coroutine stops that decode (the item
 * stays pushed).
 */
suspend fun Session.pushAsync(
    id: String,
    eager: Boolean = false,
    request: RankRequest = RankRequest(),
    dispatcher: CoroutineDispatcher = Dispatchers.Default,
) {
    withContext(dispatcher) { push(id) }
    if (eager) prefillAsync(request, dispatcher)
}

/** [Session.prefill] on [dispatcher]; cancelling the coroutine cancels the decode. */
suspend fun Session.prefillAsync(
    request: RankRequest = RankRequest(),
    dispatcher: CoroutineDispatcher = Dispatchers.Default,
): RankStats {
    val (req, token) = request.withToken()
    return runCancellable(dispatcher, token) { prefill(req) }
}

/** What [rankFlow] emits: progress while the rank decodes, then its result. */
sealed interface RankEvent {
    data class Progress(val progress: RankProgress) : RankEvent
    data class Done(val ranking: Ranking) : RankEvent
}

/**
 * A rank as a cold [Flow]: [RankEvent.Progress] after decodes (dropped, never blocking the
 * decode, when the collector falls behind), then one [RankEvent.Done]. Cancelling the collector
 * cancels the ranking. The request's own progress listener is replaced.
 */
fun Engine.rankFlow(request: RankRequest, dispatcher: CoroutineDispatcher = Dispatchers.Default): Flow<RankEvent> =
    channelFlow {
        val listener = object : ProgressListener {
            override fun onProgress(progress: RankProgress) {
                trySend(RankEvent.Progress(progress))
            }
        }
        val (req, token) = request.copy(progress = listener).withToken()
        send(RankEvent.Done(runCancellable(dispatcher, token) { rank(req) }))
    }
