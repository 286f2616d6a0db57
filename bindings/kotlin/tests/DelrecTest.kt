// JVM test of the generated Kotlin bindings against a real model and pack.
//
// Environment (set by run-tests.sh): DELREC_MODEL, DELREC_PACK (a pack for DELREC_MODEL),
// DELREC_OTHER_PACK (a pack built for another model), DELREC_CLI (the `delrec` binary, the
// reference), DELREC_CATALOG (the catalog.csv the pack was built from).
// Prints one line per test and a final "N passed, M failed"; exits non-zero on any failure.

import dev.delrec.*
import java.io.File
import java.util.concurrent.Callable
import java.util.concurrent.Executors
import java.util.concurrent.TimeUnit
import kotlin.math.abs
import kotlin.system.exitProcess
import kotlinx.coroutines.cancelAndJoin
import kotlinx.coroutines.launch

var passed = 0
var failed = 0

fun test(name: String, body: () -> Unit) {
    try {
        body()
        passed++
        println("PASS  $name")
    } catch (t: Throwable) {
        failed++
        println("FAIL  $name: $t")
        t.printStackTrace(System.out)
    }
}

fun check(cond: Boolean, msg: () -> String) {
    if (!cond) throw AssertionError(msg())
}

inline fun <reified E : Throwable> expectThrows(block: () -> Unit): E {
    try {
        block()
    } catch (e: Throwable) {
        if (e is E) return e
        throw AssertionError("expected ${E::class.simpleName}, got ${e::class.qualifiedName}: ${e.message}")
    }
    throw AssertionError("expected ${E::class.simpleName}, but nothing was thrown")
}

fun env(name: String): String = System.getenv(name) ?: throw IllegalStateException("set $name")

val model = env("DELREC_MODEL")
val pack = env("DELREC_PACK")
val otherPack = env("DELREC_OTHER_PACK")
val seqPack = env("DELREC_SEQ_PACK")
val adapterPack = env("DELREC_ADAPTER_PACK")
val cli = env("DELREC_CLI")
val catalog: List<Pair<String, String>> =
    File(env("DELREC_CATALOG")).readLines().drop(1).filter { it.isNotBlank() }.map { csvFields(it).let { f -> f[0] to f[1] } }

/** The fields of one CSV line (RFC 4180 quoting; the fixture catalog has no multi-line fields). */
fun csvFields(line: String): List<String> {
    val out = mutableListOf<String>()
    val cur = StringBuilder()
    var i = 0
    var quoted = false
    while (i < line.length) {
        val c = line[i]
        when {
            quoted && c == '"' && i + 1 < line.length && line[i + 1] == '"' -> { cur.append('"'); i++ }
            c == '"' -> quoted = !quoted
            !quoted && c == ',' -> { out += cur.toString(); cur.clear() }
            else -> cur.append(c)
        }
        i++
    }
    out += cur.toString()
    return out
}

/** The Rust CLI's scores (id -> score, in its order) for the same request. */
fun cliRank(history: List<String>, candidates: List<String>? = null, topK: Int? = null, naive: Boolean = false,
            packPath: String = pack): List<Pair<String, Double>> {
    val cmd = mutableListOf(cli, "rank", "--model", model, "--pack", packPath, "--threads", "2", "--json",
        "--history", history.joinToString(","))
    if (candidates != null) cmd += listOf("--candidates", candidates.joinToString(","))
    if (topK != null) cmd += listOf("--top-k", topK.toString())
    if (naive) cmd += "--naive"
    val p = ProcessBuilder(cmd).redirectError(ProcessBuilder.Redirect.DISCARD).start()
    val out = p.inputStream.bufferedReader().readText()
    check(p.waitFor(120, TimeUnit.SECONDS) && p.exitValue() == 0) { "delrec rank failed: $cmd" }
    // serde_json prints each item's keys sorted: the n-th "id" and the n-th "score" belong together.
    val ids = Regex("\"id\":\\s*\"([^\"]*)\"").findAll(out).map { it.groupValues[1] }.toList()
    val scores = Regex("\"score\":\\s*(-?[0-9.eE+-]+)").findAll(out).map { it.groupValues[1].toDouble() }.toList()
    check(ids.size == scores.size && ids.isNotEmpty()) { "could not parse the CLI output:\n$out" }
    return ids.zip(scores)
}

/** `delrec recommend --json` for one history: (id, fused score) in order. */
fun cliRecommend(history: List<String>, n: Int, retrieve: Int): List<Pair<String, Double>> {
    val cmd = listOf(cli, "recommend", "--model", model, "--pack", seqPack, "--threads", "2", "--json",
        "--history", history.joinToString(","), "--n", n.toString(), "--retrieve", retrieve.toString())
    val p = ProcessBuilder(cmd).redirectError(ProcessBuilder.Redirect.DISCARD).start()
    val out = p.inputStream.bufferedReader().readText()
    check(p.waitFor(120, TimeUnit.SECONDS) && p.exitValue() == 0) { "delrec recommend failed: $cmd" }
    val ids = Regex("\"id\":\\s*\"([^\"]*)\"").findAll(out).map { it.groupValues[1] }.toList()
    val scores = Regex("\"score\":\\s*(-?[0-9.eE+-]+)").findAll(out).map { it.groupValues[1].toDouble() }.toList()
    check(ids.size == scores.size && ids.size == n) { "could not parse the CLI output:\n$out" }
    return ids.zip(scores)
}

fun assertSorted(r: Ranking) {
    for (i in 1 until r.items.size) {
        check(r.items[i - 1].score >= r.items[i].score) { "not sorted at $i: ${r.items[i - 1].score} < ${r.items[i].score}" }
    }
}

fun assertMatches(r: Ranking, reference: List<Pair<String, Double>>, tol: Double = 1e-4) {
    check(r.items.size == reference.size) { "${r.items.size} items, reference has ${reference.size}" }
    val ref = reference.toMap()
    for (it in r.items) {
        val want = ref[it.id] ?: throw AssertionError("${it.id} not in the reference")
        check(abs(it.score - want) <= tol) { "${it.id}: score ${it.score}, reference $want" }
    }
    // Same order, except where scores tie within the tolerance.
    for ((i, item) in r.items.withIndex()) {
        check(item.id == reference[i].first || abs(item.score - reference[i].second) <= tol) {
            "rank $i: ${item.id}, reference ${reference[i].first}"
        }
    }
}

fun config(): EngineConfig = defaultEngineConfig().copy(threads = 2)

/** libc through JNA: a raw descriptor, as Android's ParcelFileDescriptor.getFd() gives one. */
interface LibC : com.sun.jna.Library {
    fun open(path: String, flags: Int): Int
    fun close(fd: Int): Int

    companion object {
        val INSTANCE: LibC = com.sun.jna.Native.load("c", LibC::class.java)
    }
}

fun main() {
    val ids = catalog.map { it.first }
    val history = listOf("m001", "m002")

    test("EngineConfig() is defaultEngineConfig(), the runtime defaults") {
        val c = defaultEngineConfig()
        check(EngineConfig() == c) { "EngineConfig() = ${EngineConfig()}, defaultEngineConfig() = $c" }
        check(c.contextSize == 2048 && c.batchSize == 512 && c.maxSequences == 32) { "$c" }
        check(c.kvType == null && c.flashAttention && c.verifyChecksum && c.digestCacheDir == null && c.threads == 0) { "$c" }
        // An engine reports the values it resolved the nulls to.
        Engine.open(model, pack, EngineConfig(threads = 2)).use { e ->
            check(e.config() == c.copy(threads = 2, backend = Backend.AUTO, kvType = KvType.F16)) { "${e.config()}" }
        }
        // Signed FFI integers: a negative count is refused with the setting named.
        val neg = expectThrows<DelrecException.BadRequest> { Engine.open(model, pack, EngineConfig(maxContexts = -1)) }
        check(neg.kind == BadRequestKind.INVALID_ARGUMENT && neg.field == "max_contexts") { "$neg" }
    }

    test("devices and the backend that ran") {
        val all = devices()
        check(all.any { it.backend == Backend.CPU && !it.offloads }) { "$all" }
        check(defaultEngineConfig().backend == null && defaultEngineConfig().gpuLayers == -1) { "${defaultEngineConfig()}" }
        val cpu = Engine.open(model, pack, config().copy(backend = Backend.CPU))
        val info = cpu.backend()
        check(info.kind == Backend.CPU && info.requested == Backend.CPU && info.device == null && info.gpuLayers == 0 && !info.fellBack) { "$info" }
        check(cpu.rank(RankRequest(history = history, topK = 3)).stats.backend == Backend.CPU)
        // A GPU backend this build lacks is an error, unless the CPU is allowed instead.
        if (all.none { it.backend == Backend.METAL }) {
            val e = expectThrows<DelrecException.BadRequest> { Engine.open(model, pack, config().copy(backend = Backend.METAL)) }
            check(e.kind == BadRequestKind.BACKEND_UNAVAILABLE && e.field == "backend") { "$e" }
            val fb = Engine.open(model, pack, config().copy(backend = Backend.METAL, cpuFallback = true)).backend()
            check(fb.kind == Backend.CPU && fb.requested == Backend.METAL && fb.fellBack) { "$fb" }
        }
    }

    val engine = Engine.open(model, pack, config())
    // Plans compared with each other run on the exact path (F32 cache, classic attention): flash
    // attention accumulates in F16, so different batchings differ by ~1e-3.
    val exact = Engine.open(model, pack, config().copy(kvType = KvType.F32, flashAttention = false))

    test("catalog lookups") {
        check(engine.catalogSize() == ids.size.toLong()) { "catalogSize ${engine.catalogSize()}, csv has ${ids.size}" }
        for ((id, title) in catalog) {
            check(engine.itemTitle(id) == title) { "itemTitle($id) = ${engine.itemTitle(id)}, csv: $title" }
        }
        val (id0, title0) = catalog[0]
        val item = engine.item(id0)
        check(item.id == id0 && item.index == 0 && item.title == title0) { "$item" }
        check(engine.itemAt(0) == item) { "itemAt(0) = ${engine.itemAt(0)}" }
        val e = expectThrows<DelrecException.BadRequest> { engine.itemAt(ids.size.toInt()) }
        check(e.kind == BadRequestKind.INVALID_ARGUMENT && e.field == "index") { "$e" }
        check(e.reason.contains("out of range")) { e.reason }
        val u = expectThrows<DelrecException.BadRequest> { engine.itemTitle("no-such-item") }
        check(u.kind == BadRequestKind.UNKNOWN_ITEM && u.itemId == "no-such-item") { "$u" }
        check(engine.softPrompts() == listOf("default")) { "${engine.softPrompts()}" }
        check(engine.config() == config().copy(backend = Backend.AUTO, kvType = KvType.F16)) { "${engine.config()}" }
    }

    test("whole catalog: sorted and equal to the Rust CLI") {
        val r = engine.rank(RankRequest(history = history))
        check(r.items.size == ids.size) { "${r.items.size} items" }
        assertSorted(r)
        assertMatches(r, cliRank(history))
        check(r.stats.candidates == ids.size.toLong() && r.stats.decodeCalls > 0) { "${r.stats}" }
        val mode = engine.scoringMode()
        for (it in r.items) {
            check(abs(it.meanLogprob - it.logprob / it.nTokens.toDouble()) < 1e-9) { "$it" }
            val expected = if (mode == ScoringMode.SUM) it.logprob else it.meanLogprob
            check(it.score == expected) { "$it under $mode" }
        }
    }

    test("candidates + topK equal the Rust CLI") {
        val cands = listOf("m010", "m003", "m020", "m007", "m030")
        val r = engine.rank(RankRequest(history = listOf("m005", "m001", "m009"), candidates = cands, topK = 3))
        check(r.items.size == 3) { "${r.items.size} items" }
        assertSorted(r)
        assertMatches(r, cliRank(listOf("m005", "m001", "m009"), cands, 3))
    }

    test("exhaustive top-k equals pruned top-k") {
        val pruned = exact.rank(RankRequest(history = history, topK = 5))
        val full = exact.rank(RankRequest(history = history, topK = 5, exhaustive = true))
        check(pruned.items.size == 5) { "${pruned.items.size} items" }
        assertMatches(pruned, full.items.map { it.id to it.score })
    }

    test("naive plan equals the shared-prefix plan") {
        val shared = exact.rank(RankRequest(history = history, candidates = ids.take(8)))
        val naive = exact.rank(RankRequest(history = history, candidates = ids.take(8), plan = Plan.NAIVE))
        assertMatches(naive, shared.items.map { it.id to it.score })
    }

    test("excludeHistory leaves the history out") {
        val r = engine.rank(RankRequest(history = history, excludeHistory = true))
        check(r.items.size == ids.size - 2 && r.items.none { it.id in history }) { "${r.items.map { it.id }}" }
    }

    test("session ranks like the engine and reuses its prefix") {
        engine.session(null).use { s ->
            for (h in history) s.push(h)
            check(s.history() == history) { "${s.history()}" }
            val first = s.rank(RankRequest(topK = 10))
            assertMatches(first, engine.rank(RankRequest(history = history, topK = 10)).items.map { it.id to it.score })
            s.push("m003")
            val second = s.rank(RankRequest())
            check(second.stats.prefixReused > 0) { "nothing reused: ${second.stats}" }
            assertMatches(second, cliRank(history + "m003"))
            s.setHistory(listOf("m004"))
            check(s.history() == listOf("m004")) { "${s.history()}" }
            assertMatches(s.rank(RankRequest()), cliRank(listOf("m004")))
            val e = expectThrows<DelrecException.BadRequest> { s.push("m999") }
            check(e.kind == BadRequestKind.UNKNOWN_ITEM && e.itemId == "m999") { "$e" }
            check(s.history() == listOf("m004")) { "a rejected push changed the history: ${s.history()}" }
        }
        val e = expectThrows<DelrecException.BadRequest> { engine.session("nope") }
        check(e.kind == BadRequestKind.UNKNOWN_SOFT_PROMPT && e.field == "nope") { "$e" }
        check(e.reason.contains("nope") && e.reason.contains("default")) { e.reason }
    }

    test("concurrent ranks on one engine agree") {
        val want = engine.rank(RankRequest(history = history)).items.map { it.id to it.score }
        val pool = Executors.newFixedThreadPool(4)
        try {
            val results = pool.invokeAll((0 until 4).map { Callable { engine.rank(RankRequest(history = history)) } })
            for (f in results) assertMatches(f.get(), want, 1e-9)
        } finally {
            pool.shutdown()
        }
    }

    // --- bad input: the right exception subclass with a useful message ---

    test("unknown history id -> BadRequest UNKNOWN_ITEM with the id") {
        val e = expectThrows<DelrecException.BadRequest> { engine.rank(RankRequest(history = listOf("m001", "m999"))) }
        check(e.kind == BadRequestKind.UNKNOWN_ITEM && e.itemId == "m999") { "$e" }
        check(e.reason.contains("m999")) { e.reason }
    }

    test("unknown candidate id -> BadRequest UNKNOWN_ITEM with the id") {
        val e = expectThrows<DelrecException.BadRequest> {
            engine.rank(RankRequest(history = history, candidates = listOf("m003", "zzz")))
        }
        check(e.kind == BadRequestKind.UNKNOWN_ITEM && e.itemId == "zzz") { "$e" }
    }

    test("empty history -> BadRequest EMPTY_HISTORY") {
        val e = expectThrows<DelrecException.BadRequest> { engine.rank(RankRequest()) }
        check(e.kind == BadRequestKind.EMPTY_HISTORY) { "$e" }
        check(e.reason.contains("history")) { e.reason }
    }

    test("empty candidates, duplicates, topK 0 -> BadRequest of each kind") {
        val c = expectThrows<DelrecException.BadRequest> {
            engine.rank(RankRequest(history = history, candidates = listOf()))
        }
        check(c.kind == BadRequestKind.EMPTY_CANDIDATES) { "$c" }
        val d = expectThrows<DelrecException.BadRequest> {
            engine.rank(RankRequest(history = history, candidates = listOf("m003", "m004", "m003")))
        }
        check(d.kind == BadRequestKind.DUPLICATE_CANDIDATE && d.itemId == "m003") { "$d" }
        val k = expectThrows<DelrecException.BadRequest> { engine.rank(RankRequest(history = history, topK = 0)) }
        check(k.kind == BadRequestKind.INVALID_ARGUMENT && k.field == "top_k") { "$k" }
    }

    test("unknown soft prompt in a request -> BadRequest UNKNOWN_SOFT_PROMPT") {
        val e = expectThrows<DelrecException.BadRequest> {
            engine.rank(RankRequest(history = history, softPrompt = "x"))
        }
        check(e.kind == BadRequestKind.UNKNOWN_SOFT_PROMPT && e.field == "x") { "$e" }
    }

    test("missing model file -> BadFile IO naming the path") {
        val e = expectThrows<DelrecException.BadFile> { Engine.open("/nonexistent/model.gguf", pack, config()) }
        check(e.kind == BadFileKind.IO && e.path == "/nonexistent/model.gguf") { "$e" }
    }

    test("missing pack file -> BadFile IO naming the path") {
        val e = expectThrows<DelrecException.BadFile> { Engine.open(model, "/nonexistent/pack.gguf", config()) }
        check(e.kind == BadFileKind.IO && e.path == "/nonexistent/pack.gguf") { "$e" }
    }

    test("a file that is not GGUF -> BadFile INVALID") {
        val e = expectThrows<DelrecException.BadFile> { Engine.open(env("DELREC_CATALOG"), pack, config()) }
        check(e.kind == BadFileKind.INVALID && e.path!!.endsWith("catalog.csv")) { "$e" }
    }

    test("pack of another model -> BadFile MISMATCH with the field and both values") {
        val e = expectThrows<DelrecException.BadFile> { Engine.open(model, otherPack, config()) }
        check(e.kind == BadFileKind.MISMATCH && e.field == "architecture") { "$e" }
        check(e.packValue == "qwen2" && e.modelValue == "llama") { "$e" }
    }

    test("bad config -> BadRequest INVALID_ARGUMENT naming the setting") {
        val e = expectThrows<DelrecException.BadRequest> { Engine.open(model, pack, config().copy(maxSequences = 1)) }
        check(e.kind == BadRequestKind.INVALID_ARGUMENT && e.field == "max_sequences") { "$e" }
    }

    test("tiny context -> Capacity with needed > available") {
        // llama.cpp rounds small contexts up (to 256 cells); a 40-item history needs more.
        Engine.open(model, pack, config().copy(contextSize = 16)).use { small ->
            val e = expectThrows<DelrecException.Capacity> { small.rank(RankRequest(history = ids.take(40))) }
            check(e.resource == Resource.CONTEXT_CELLS) { "$e" }
            check(e.needed > e.available && e.available >= 16) { "needed ${e.needed}, available ${e.available}" }
            check(e.reason.contains("context")) { e.reason }
        }
    }

    test("a memory limit below the engine's budget -> Capacity MEMORY at open") {
        val e = expectThrows<DelrecException.Capacity> { Engine.open(model, pack, config().copy(memoryLimitBytes = 1L shl 20)) }
        check(e.resource == Resource.MEMORY && e.needed > e.available && e.available == 1L shl 20) { "$e" }
    }

    // --- cancellation and deadlines ---

    test("a cancelled token -> Cancelled") {
        val token = CancelToken()
        check(!token.isCancelled()) { "new token is cancelled" }
        token.cancel()
        check(token.isCancelled()) { "cancel() did not stick" }
        val e = expectThrows<DelrecException.Cancelled> { engine.rank(RankRequest(history = history, cancel = token)) }
        check(e.reason == "cancelled") { e.reason }
        // The engine is still usable afterwards.
        check(engine.rank(RankRequest(history = history, topK = 1)).items.size == 1) { "engine broken after cancel" }
    }

    test("cancel from another thread stops a running rank") {
        val longHistory = ids.take(40)
        val token = CancelToken()
        val t0 = System.nanoTime()
        val full = engine.rank(RankRequest(history = longHistory, plan = Plan.NAIVE, candidates = ids.take(4)))
        val fourMs = (System.nanoTime() - t0) / 1e6
        val pool = Executors.newSingleThreadExecutor()
        try {
            val t1 = System.nanoTime()
            val f = pool.submit(Callable {
                runCatching { engine.rank(RankRequest(history = longHistory, plan = Plan.NAIVE, cancel = token)) }
            })
            Thread.sleep(50)
            token.cancel()
            val r = f.get(120, TimeUnit.SECONDS)
            val ms = (System.nanoTime() - t1) / 1e6
            val e = r.exceptionOrNull()
            check(e is DelrecException.Cancelled) { "expected Cancelled, got ${r.getOrNull()?.items?.size} items / $e" }
            // The whole catalog takes ~10x the 4-candidate run; the cancelled call stopped early.
            check(ms < fourMs * 10) { "cancel took $ms ms; 4 candidates took $fourMs ms" }
            check(full.items.size == 4) { "${full.items.size}" }
        } finally {
            pool.shutdown()
        }
    }

    test("timeoutMs 0 -> DeadlineExceeded") {
        val e = expectThrows<DelrecException.DeadlineExceeded> {
            engine.rank(RankRequest(history = history, timeoutMs = 0L))
        }
        check(e.reason.contains("deadline")) { e.reason }
    }

    test("a hostile model (block_count 0, which aborts llama.cpp) -> BadFile INVALID; the library stays usable") {
        // Patch the u32 value of `llama.block_count` in a copy of the model: key length (u64),
        // key bytes, value type (u32 = 4), value.
        val bytes = File(model).readBytes()
        val key = "llama.block_count".toByteArray()
        val at = (0..bytes.size - key.size).firstOrNull { i -> key.indices.all { bytes[i + it] == key[it] } }
            ?: error("no llama.block_count key in $model")
        val value = at + key.size + 4
        check(bytes[at + key.size].toInt() == 4) { "llama.block_count is not a u32" }
        for (j in 0 until 4) bytes[value + j] = 0
        val hostile = File.createTempFile("hostile", ".gguf")
        try {
            hostile.writeBytes(bytes)
            val e = expectThrows<DelrecException.BadFile> { Engine.open(hostile.path, pack, config()) }
            check(e.kind == BadFileKind.INVALID && e.reason.contains("block_count")) { "$e" }
        } finally {
            hostile.delete()
        }
        // The process is alive and the library still works.
        Engine.open(model, pack, config()).use { ok ->
            check(ok.rank(RankRequest(history = history, topK = 3)).items.size == 3) { "engine broken after hostile model" }
        }
    }

    test("recommend (the cascade) equals the Rust CLI and carries both scores") {
        Engine.open(model, seqPack, config()).use { e ->
            check(e.hasSequentialModel() && !engine.hasSequentialModel()) { "hasSequentialModel" }
            val r = e.recommend(RecommendRequest(history = history, n = 5, retrieve = 8))
            val ref = cliRecommend(history, 5, 8)
            check(r.items.map { it.id } == ref.map { it.first }) { "order ${r.items.map { it.id }} vs CLI ${ref.map { it.first }}" }
            for ((it, want) in r.items.zip(ref)) {
                check(abs(it.score - want.second) < 1e-4 && it.llmScore != null) { "${it.id}: ${it.score} vs ${want.second}" }
            }
            check(r.stats.retrieved == 8L && r.stats.rank?.candidates == 8L) { "${r.stats}" }
            check(r.items.none { it.id in history }) { "history items recommended" }
            val off = e.recommend(RecommendRequest(history = history, n = 10, llmOff = true))
            check(off.items.all { it.llmScore == null && it.score == it.seqScore }) { "llmOff carries LLM scores" }
            for (i in 1 until off.items.size) check(off.items[i - 1].seqScore >= off.items[i].seqScore) { "llmOff not sorted" }
            e.session(null).use { s ->
                s.setHistory(history)
                val viaSession = s.recommend(RecommendRequest(n = 5, retrieve = 8))
                check(viaSession.items.map { it.id } == r.items.map { it.id }) { "session differs" }
            }
        }
    }

    test("recommend: bad n, a pack without a sequential model -> BadRequest of each kind") {
        Engine.open(model, seqPack, config()).use { e ->
            val bad = expectThrows<DelrecException.BadRequest> { e.recommend(RecommendRequest(history = history, n = 0)) }
            check(bad.kind == BadRequestKind.INVALID_ARGUMENT && bad.field == "n") { "$bad" }
            val w = expectThrows<DelrecException.BadRequest> { e.recommend(RecommendRequest(history = history, llmWeight = 2.0f)) }
            check(w.field == "llm_weight") { "$w" }
        }
        val none = expectThrows<DelrecException.BadRequest> { engine.recommend(RecommendRequest(history = history)) }
        check(none.kind == BadRequestKind.NO_SEQUENTIAL_MODEL) { "$none" }
    }

    test("addItem: a new title is ranked; a taken id -> BadRequest DUPLICATE_ITEM") {
        Engine.open(model, pack, config()).use { e ->
            val before = e.catalogSize()
            val a = e.addItem("new-1", "Neon Harbor (2031)")
            check(a.index.toLong() == before && !a.retrievable && e.catalogSize() == before + 1L) { "$a" }
            check(e.item("new-1").title == "Neon Harbor (2031)") { "lookup" }
            val r = e.rank(RankRequest(history = history, candidates = listOf("new-1", "m003")))
            check(r.items.any { it.id == "new-1" }) { "added item not ranked" }
            val d = expectThrows<DelrecException.BadRequest> { e.addItem("m001", "Again") }
            check(d.kind == BadRequestKind.DUPLICATE_ITEM && d.itemId == "m001") { "$d" }
        }
    }

    test("a closed engine refuses calls; its open session keeps working") {
        val e2 = Engine.open(model, pack, config())
        val s = e2.session(null)
        e2.close()
        expectThrows<IllegalStateException> { e2.catalogSize() }
        s.use {
            it.push("m001")
            check(it.rank(RankRequest(topK = 3)).items.size == 3) { "session of a closed engine failed" }
        }
    }

    test("every context held by a session -> Busy after contextWaitMs, not a wedge; a closed session frees it") {
        Engine.open(model, pack, config().copy(maxContexts = 1, contextWaitMs = 100L)).use { e ->
            val s = e.session(null)
            val t0 = System.nanoTime()
            val busy = expectThrows<DelrecException.Busy> { e.rank(RankRequest(history = history, topK = 3)) }
            val ms = (System.nanoTime() - t0) / 1e6
            check(busy.contexts == 1L && busy.waitedMs >= 100L && ms < 5000) { "$busy after $ms ms" }
            expectThrows<DelrecException.Busy> { e.session(null) }
            s.close()
            check(e.rank(RankRequest(history = history, topK = 3)).items.size == 3) { "context not returned" }
        }
    }

    test("installFile replaces a model atomically; an open engine keeps the old one; a bad download changes nothing") {
        val dir = java.nio.file.Files.createTempDirectory("install").toFile()
        try {
            val dest = File(dir, "model.gguf")
            installFile(model, dest.path)
            check(dest.readBytes().contentEquals(File(model).readBytes())) { "not installed" }
            Engine.open(dest.path, pack, config()).use { e ->
                val before = e.rank(RankRequest(history = history, topK = 3)).items.map { it.id }
                val bad = File(dir, "download.gguf").apply { writeText("not a model") }
                val err = expectThrows<DelrecException.BadFile> { installFile(bad.path, dest.path) }
                check(err.kind == BadFileKind.INVALID) { "$err" }
                installFile(model, dest.path)
                check(e.rank(RankRequest(history = history, topK = 3)).items.map { it.id } == before) { "engine changed" }
            }
            check(dir.listFiles()!!.size == 2) { "left behind: ${dir.listFiles()!!.map { it.name }}" }
        } finally {
            dir.deleteRecursively()
        }
    }

    test("Base: packs over one model, one with a LoRA adapter, each equal to the Rust CLI") {
        Base.open(model, config()).use { base ->
            val plain = base.openPack(pack)
            val adapted = base.openPack(adapterPack)
            check(plain.adapter() == null) { "${plain.adapter()}" }
            val a = adapted.adapter() ?: throw AssertionError("the adapter pack has no adapter")
            check(a.weights > 0 && a.maxRank > 0 && a.scale == 1.0f && "attn_q" in a.targets) { "$a" }
            check(base.adaptersLoaded() == 1) { "${base.adaptersLoaded()} adapters loaded" }
            val cands = ids.take(10)
            val rp = plain.rank(RankRequest(history = history, candidates = cands))
            val ra = adapted.rank(RankRequest(history = history, candidates = cands))
            assertMatches(rp, cliRank(history, cands))
            assertMatches(ra, cliRank(history, cands, packPath = adapterPack))
            val moved = rp.items.associate { it.id to it.score }.let { m -> ra.items.maxOf { abs(it.score - m[it.id]!!) } }
            check(moved > 0.05) { "the adapter changed scores by only $moved" }
            adapted.close()
            plain.close()
        }
        Base.open(model, config()).use { base ->
            val e = expectThrows<DelrecException.BadFile> { base.openPack(otherPack) }
            check(e.kind == BadFileKind.MISMATCH) { "$e" }
            val dir = java.nio.file.Files.createTempDirectory("adapter").toFile()
            try {
                val wrong = File(dir, "wrong.gguf").apply { writeBytes(File(model).readBytes()) }
                val m = expectThrows<DelrecException.BadFile> { base.openPackWithAdapter(adapterPack, wrong.path) }
                check(m.kind == BadFileKind.MISMATCH && m.reason.contains("adapter file sha256")) { "$m" }
            } finally {
                dir.deleteRecursively()
            }
        }
    }

    // --- progress, logs, coroutines ---

    test("rank progress: one report per decode, ending at the counters") {
        val seen = java.util.Collections.synchronizedList(mutableListOf<RankProgress>())
        val listener = object : ProgressListener {
            override fun onProgress(progress: RankProgress) { seen += progress }
        }
        val r = engine.rank(RankRequest(history = history, progress = listener))
        check(seen.size.toLong() == r.stats.decodeCalls) { "${seen.size} reports, ${r.stats.decodeCalls} decodes" }
        check(seen.zipWithNext().all { (a, b) -> b.decodedRows > a.decodedRows && b.plannedRows >= a.plannedRows }) { "$seen" }
        check(seen.last().decodedRows == r.stats.decodedRows && seen.all { it.decodedRows <= it.plannedRows }) { "$seen" }
        // A listener that throws costs its reports, not the rank.
        val thrower = object : ProgressListener {
            override fun onProgress(progress: RankProgress) { throw IllegalStateException("the app's listener threw") }
        }
        assertMatches(engine.rank(RankRequest(history = history, progress = thrower)), r.items.map { it.id to it.score }, 0.0)
    }

    test("open progress and cancel: digest then load, to 1.0; a cancelled open -> Cancelled") {
        val stages = java.util.Collections.synchronizedList(mutableListOf<Pair<LoadStage, Float>>())
        val listener = object : LoadListener {
            override fun onLoadProgress(stage: LoadStage, fraction: Float) { stages += stage to fraction }
        }
        Engine.openWithProgress(model, pack, config(), listener, null).use { e ->
            check(e.rank(RankRequest(history = history, topK = 3)).items.size == 3)
        }
        val load = stages.filter { it.first == LoadStage.LOAD }.map { it.second }
        check(load.isNotEmpty() && load.last() == 1.0f && load.zipWithNext().all { (a, b) -> b >= a }) { "$stages" }
        val token = CancelToken()
        val stopper = object : LoadListener {
            override fun onLoadProgress(stage: LoadStage, fraction: Float) { if (stage == LoadStage.LOAD) token.cancel() }
        }
        expectThrows<DelrecException.Cancelled> { Engine.openWithProgress(model, pack, config(), stopper, token) }
    }

    test("a log sink gets llama.cpp's lines; a normal cancel logs no error; a throwing sink is survived") {
        val lines = java.util.Collections.synchronizedList(mutableListOf<Pair<LogLevel, String>>())
        setLogSink(object : LogSink {
            override fun log(level: LogLevel, message: String) { lines += level to message }
        }, LogLevel.DEBUG)
        try {
            Engine.open(model, pack, config()).use { e ->
                check(lines.any { it.second.contains("llama_model_load") || it.second.contains("print_info") }) { "${lines.take(5)}" }
                val before = lines.size
                val token = CancelToken()
                val cancelAtFirst = object : ProgressListener {
                    override fun onProgress(progress: RankProgress) = token.cancel()
                }
                expectThrows<DelrecException.Cancelled> {
                    e.rank(RankRequest(history = ids.take(40), plan = Plan.NAIVE, cancel = token, progress = cancelAtFirst))
                }
                val after = synchronized(lines) { lines.drop(before) }
                check(after.none { it.first == LogLevel.ERROR || it.first == LogLevel.WARN }) { "a cancel logged: $after" }
            }
            setLogSink(object : LogSink {
                override fun log(level: LogLevel, message: String) { throw RuntimeException("the app's logger threw") }
            }, LogLevel.DEBUG)
            Engine.open(model, pack, config()).use { e ->
                check(e.rank(RankRequest(history = history, topK = 3)).items.size == 3) { "engine broken by a throwing sink" }
            }
        } finally {
            setLogSink(null, LogLevel.DEBUG)
        }
    }

    test("suspend rank equals the blocking rank; rankFlow reports progress then the result") {
        kotlinx.coroutines.runBlocking {
            val blocking = engine.rank(RankRequest(history = history))
            val async = engine.rankAsync(RankRequest(history = history))
            assertMatches(async, blocking.items.map { it.id to it.score }, 0.0)
            val events = mutableListOf<RankEvent>()
            engine.rankFlow(RankRequest(history = history)).collect { events += it }
            val done = events.last() as RankEvent.Done
            assertMatches(done.ranking, blocking.items.map { it.id to it.score }, 0.0)
            val progress = events.dropLast(1).map { (it as RankEvent.Progress).progress }
            check(progress.isNotEmpty() && progress.last().decodedRows == done.ranking.stats.decodedRows) { "$progress" }
            val opened = openEngine(model, pack, config()) { _, _ -> }
            opened.use { check(it.rankAsync(RankRequest(history = history, topK = 2)).items.size == 2) }
            engine.session(null).use { s ->
                s.pushAsync(history[0])
                s.pushAsync(history[1], eager = true)
                val r = s.rankAsync(RankRequest())
                assertMatches(r, blocking.items.map { it.id to it.score })
                // The eager push decoded the prompt: the rank decoded candidate rows only.
                check(r.stats.prefixReused == r.stats.prefixRows) { "${r.stats}" }
            }
        }
    }

    test("coroutine cancellation stops a long whole-catalog rank within 100 ms") {
        kotlinx.coroutines.runBlocking {
            val started = kotlinx.coroutines.CompletableDeferred<Unit>()
            val listener = object : ProgressListener {
                override fun onProgress(progress: RankProgress) { started.complete(Unit) }
            }
            val long = RankRequest(history = ids.take(40), plan = Plan.NAIVE, progress = listener)
            val t0 = System.nanoTime()
            val full = engine.rank(long.copy(progress = null))
            val fullMs = (System.nanoTime() - t0) / 1e6
            var thrown: Throwable? = null
            val job = launch(kotlinx.coroutines.Dispatchers.Default) {
                try { engine.rankAsync(long) } catch (t: Throwable) { thrown = t; throw t }
            }
            started.await()
            kotlinx.coroutines.delay(20)
            val t1 = System.nanoTime()
            job.cancelAndJoin()
            val stopMs = (System.nanoTime() - t1) / 1e6
            println("      whole-catalog naive rank: $fullMs ms; cancel -> stopped: $stopMs ms")
            check(fullMs > 100) { "the rank ($fullMs ms) is shorter than the bound: it shows nothing" }
            check(thrown is kotlinx.coroutines.CancellationException) { "got $thrown" }
            check(stopMs < 100) { "took $stopMs ms to stop" }
            check(engine.rank(RankRequest(history = history, topK = 1)).items.size == 1) { "engine broken after cancel" }
            check(full.items.size == ids.size) { "${full.items.size}" }
        }
    }

    test("an engine Cancelled surfaces as CancellationException in suspend calls") {
        kotlinx.coroutines.runBlocking {
            val token = CancelToken().apply { cancel() }
            val e = runCatching { engine.rankAsync(RankRequest(history = history, cancel = token)) }.exceptionOrNull()
            check(e is kotlinx.coroutines.CancellationException && e.cause is DelrecException.Cancelled) { "got $e" }
            val bad = runCatching { engine.rankAsync(RankRequest(history = listOf("no-such-item"))) }.exceptionOrNull()
            check(bad is DelrecException.BadRequest && bad.kind == BadRequestKind.UNKNOWN_ITEM) { "got $bad" }
        }
    }

    test("live catalog: inline items, replaceItem, removeItem") {
        Engine.open(model, pack, config().copy(kvType = KvType.F32, flashAttention = false)).use { e ->
            val title3 = e.itemAt(3).title
            val cands = listOf(ids[3], ids[7])
            val r = e.rank(RankRequest(history = history, candidates = cands, inline = listOf(InlineItem("x-copy", title3))))
            val s = r.items.associate { it.id to it.score }
            check(s.size == 3 && abs(s["x-copy"]!! - s[ids[3]]!!) < 1e-6) { "$s" }
            check(e.catalogSize() == ids.size.toLong()) { "an inline item stayed in the catalog" }
            val dup = expectThrows<DelrecException.BadRequest> {
                e.rank(RankRequest(history = history, inline = listOf(InlineItem(ids[1], "Taken"))))
            }
            check(dup.kind == BadRequestKind.DUPLICATE_ITEM && dup.itemId == ids[1]) { "$dup" }
            val before = e.rank(RankRequest(history = history, candidates = listOf(ids[2], ids[9]))).items.associate { it.id to it.score }
            e.replaceItem(ids[2], e.itemAt(9).title)
            val after = e.rank(RankRequest(history = history, candidates = listOf(ids[2]))).items[0].score
            check(abs(after - before[ids[9]]!!) < 1e-6) { "retitled: $after vs ${before[ids[9]]}" }
            val top = e.rank(RankRequest(history = history, topK = 1)).items[0].id
            check(e.removeItem(top) && !e.removeItem(top)) { "removeItem twice" }
            check(e.liveCatalogSize() == ids.size.toLong() - 1)
            check(e.rank(RankRequest(history = history)).items.none { it.id == top }) { "a removed item was ranked" }
            val named = expectThrows<DelrecException.BadRequest> { e.rank(RankRequest(history = history, candidates = listOf(top))) }
            check(named.kind == BadRequestKind.INVALID_ARGUMENT && named.field == "candidates") { "$named" }
            check(e.rank(RankRequest(history = listOf(top), topK = 2)).items.size == 2) { "a history holding a removed item" }
        }
    }

    test("openFd: a model and pack inside a larger file (as in an APK) rank as the files do") {
        val m = File(model).readBytes()
        val p = File(pack).readBytes()
        val apk = File.createTempFile("app", ".apk")
        try {
            val modelAt = 4096L + 7 // misaligned: read into memory instead of mapped
            apk.outputStream().use { o ->
                o.write(ByteArray(modelAt.toInt()) { 0x5a }); o.write(m); o.write(ByteArray(13)); o.write(p)
            }
            val packAt = modelAt + m.size + 13
            val fd = LibC.INSTANCE.open(apk.path, 0)
            check(fd >= 0) { "open() failed" }
            val e = try {
                Engine.openFd(fd, modelAt, m.size.toLong(), fd, packAt, p.size.toLong(), config(), null, null)
            } finally {
                LibC.INSTANCE.close(fd) // the engine holds copies
            }
            e.use {
                val r = it.rank(RankRequest(history = history))
                assertMatches(r, engine.rank(RankRequest(history = history)).items.map { x -> x.id to x.score }, 0.0)
            }
            val bad = expectThrows<DelrecException.BadFile> {
                Engine.openFd(-1, 0, m.size.toLong(), -1, 0, 10, config(), null, null)
            }
            check(bad.kind == BadFileKind.IO) { "$bad" }
            val fd2 = LibC.INSTANCE.open(apk.path, 0)
            try {
                val short = expectThrows<DelrecException.BadFile> {
                    Engine.openFd(fd2, modelAt, m.size.toLong() - 100, fd2, packAt, p.size.toLong(), config(), null, null)
                }
                check(short.kind == BadFileKind.INVALID) { "$short" }
                val neg = expectThrows<DelrecException.BadRequest> {
                    Engine.openFd(fd2, -5, m.size.toLong(), fd2, packAt, p.size.toLong(), config(), null, null)
                }
                check(neg.field == "model_offset") { "$neg" }
            } finally {
                LibC.INSTANCE.close(fd2)
            }
        } finally {
            apk.delete()
        }
    }

    test("the README's Kotlin example runs and prints what it says") {
        val out = java.io.ByteArrayOutputStream()
        val stdout = System.out
        System.setOut(java.io.PrintStream(out, true))
        try {
            kotlinx.coroutines.runBlocking { readmeSnippet(model, pack) }
        } finally {
            System.setOut(stdout)
        }
        val text = out.toString()
        check(text.contains("UNKNOWN_ITEM m999") && text.contains("best: ") && text.contains(" rows")) { text }
    }

    engine.close()
    exact.close()
    println("$passed passed, $failed failed")
    exitProcess(if (failed == 0) 0 else 1)
}
