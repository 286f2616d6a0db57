// Swift test of the generated bindings (DelrecFFI) and the DelrecMobile wrappers
// (ios/Sources/DelrecMobile) against a real model and pack; the Swift counterpart of
// bindings/kotlin/tests/DelrecTest.kt. Built and run on Linux by scripts/swift.sh.
//
// Environment (set by scripts/swift.sh): DELREC_MODEL, DELREC_PACK (a pack for DELREC_MODEL),
// DELREC_OTHER_PACK (a pack built for another model), DELREC_SEQ_PACK (a pack with a sequential
// model), DELREC_CLI (the `delrec` binary, the reference), DELREC_CATALOG (the pack's catalog.csv).
// Prints one line per test and a final "N passed, M failed"; exits non-zero on any failure.

import DelrecFFI
import DelrecMobile
import Dispatch
import Foundation

// MARK: - harness

setvbuf(stdout, nil, _IOLBF, 0) // one line at a time, also into a pipe or file

nonisolated(unsafe) var passed = 0
nonisolated(unsafe) var failed = 0

struct Failure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

func check(_ cond: Bool, _ msg: @autoclosure () -> String = "", line: Int = #line) throws {
    if !cond { throw Failure("line \(line): check failed \(msg())") }
}

func test(_ name: String, _ body: () async throws -> Void) async {
    do {
        try await body()
        passed += 1
        print("PASS  \(name)")
    } catch {
        failed += 1
        print("FAIL  \(name): \(String(reflecting: error))")
    }
}

/// The error `body` throws; a `Failure` if it returns.
func thrown<T>(line: Int = #line, _ body: () async throws -> T) async throws -> Error {
    let value: T
    do {
        value = try await body()
    } catch {
        return error
    }
    throw Failure("line \(line): expected an error, got \(value)")
}

func badRequest(_ e: Error, line: Int = #line) throws -> (kind: BadRequestKind, itemId: String?, field: String?, reason: String) {
    guard let d = e as? DelrecError, case let .BadRequest(kind, itemId, field, reason) = d else {
        throw Failure("line \(line): expected DelrecError.BadRequest, got \(String(reflecting: e))")
    }
    return (kind, itemId, field, reason)
}

func badFile(_ e: Error, line: Int = #line) throws -> (kind: BadFileKind, path: String?, field: String?, packValue: String?, modelValue: String?, reason: String) {
    guard let d = e as? DelrecError, case let .BadFile(kind, path, field, packValue, modelValue, reason) = d else {
        throw Failure("line \(line): expected DelrecError.BadFile, got \(String(reflecting: e))")
    }
    return (kind, path, field, packValue, modelValue, reason)
}

/// A list several threads append to.
final class Collector<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [T] = []
    func add(_ item: T) { lock.lock(); items.append(item); lock.unlock() }
    var all: [T] { lock.lock(); defer { lock.unlock() }; return items }
}

func nowMs() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e6 }

func env(_ name: String) -> String {
    guard let v = ProcessInfo.processInfo.environment[name], !v.isEmpty else {
        print("set \(name)")
        exit(2)
    }
    return v
}

let model = env("DELREC_MODEL")
let pack = env("DELREC_PACK")
let otherPack = env("DELREC_OTHER_PACK")
let seqPack = env("DELREC_SEQ_PACK")
let cli = env("DELREC_CLI")
let catalogPath = env("DELREC_CATALOG")

/// The fields of one CSV line (RFC 4180 quoting; the fixture catalog has no multi-line fields).
func csvFields(_ line: String) -> [String] {
    var out: [String] = []
    var cur = ""
    var quoted = false
    let chars = Array(line)
    var i = 0
    while i < chars.count {
        let c = chars[i]
        if quoted && c == "\"" && i + 1 < chars.count && chars[i + 1] == "\"" {
            cur.append("\"")
            i += 1
        } else if c == "\"" {
            quoted.toggle()
        } else if !quoted && c == "," {
            out.append(cur)
            cur = ""
        } else {
            cur.append(c)
        }
        i += 1
    }
    out.append(cur)
    return out
}

let catalog: [(id: String, title: String)] = try! String(contentsOfFile: catalogPath, encoding: .utf8)
    .split(separator: "\n", omittingEmptySubsequences: true).dropFirst()
    .map { csvFields(String($0)) }.map { ($0[0], $0[1]) }
let ids = catalog.map(\.id)

/// Runs `delrec` with `args` and returns the parsed JSON items as (id, score).
func cliItems(_ args: [String]) throws -> [(id: String, score: Double)] {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: cli)
    p.arguments = args
    let out = Pipe()
    p.standardOutput = out
    p.standardError = FileHandle.nullDevice
    try p.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    guard p.terminationStatus == 0 else { throw Failure("delrec \(args) exited \(p.terminationStatus)") }
    guard let json = try JSONSerialization.jsonObject(with: data) as? [String: Any],
          let items = json["items"] as? [[String: Any]], !items.isEmpty
    else { throw Failure("could not parse the CLI output: \(String(decoding: data, as: UTF8.self))") }
    return try items.map { item in
        guard let id = item["id"] as? String, let score = (item["score"] as? NSNumber)?.doubleValue else {
            throw Failure("CLI item without id/score: \(item)")
        }
        return (id, score)
    }
}

/// The Rust CLI's scores (in its order) for the same request.
func cliRank(_ history: [String], candidates: [String]? = nil, topK: Int? = nil) throws -> [(id: String, score: Double)] {
    var args = ["rank", "--model", model, "--pack", pack, "--threads", "2", "--json", "--history", history.joined(separator: ",")]
    if let candidates { args += ["--candidates", candidates.joined(separator: ",")] }
    if let topK { args += ["--top-k", String(topK)] }
    return try cliItems(args)
}

func cliRecommend(_ history: [String], n: Int, retrieve: Int) throws -> [(id: String, score: Double)] {
    try cliItems(["recommend", "--model", model, "--pack", seqPack, "--threads", "2", "--json",
                  "--history", history.joined(separator: ","), "--n", String(n), "--retrieve", String(retrieve)])
}

func pairs(_ r: Ranking) -> [(id: String, score: Double)] { r.items.map { ($0.id, $0.score) } }

func assertSorted(_ r: Ranking, line: Int = #line) throws {
    for i in r.items.indices.dropFirst() {
        try check(r.items[i - 1].score >= r.items[i].score, "not sorted at \(i)", line: line)
    }
}

func assertMatches(_ r: Ranking, _ reference: [(id: String, score: Double)], tol: Double = 1e-4, line: Int = #line) throws {
    try check(r.items.count == reference.count, "\(r.items.count) items, reference has \(reference.count)", line: line)
    let ref = Dictionary(reference.map { ($0.id, $0.score) }, uniquingKeysWith: { a, _ in a })
    for item in r.items {
        guard let want = ref[item.id] else { throw Failure("line \(line): \(item.id) not in the reference") }
        try check(abs(item.score - want) <= tol, "\(item.id): score \(item.score), reference \(want)", line: line)
    }
    // Same order, except where scores tie within the tolerance.
    for (i, item) in r.items.enumerated() {
        try check(item.id == reference[i].id || abs(item.score - reference[i].score) <= tol,
                  "rank \(i): \(item.id), reference \(reference[i].id)", line: line)
    }
}

func config() -> EngineConfig {
    var c = defaultEngineConfig()
    c.threads = 2
    return c
}

final class Progress: ProgressListener, @unchecked Sendable {
    let seen = Collector<RankProgress>()
    let onEach: (@Sendable (RankProgress) -> Void)?
    init(_ onEach: (@Sendable (RankProgress) -> Void)? = nil) { self.onEach = onEach }
    func onProgress(progress: RankProgress) throws {
        seen.add(progress)
        onEach?(progress)
    }
}

struct ListenerError: Error {}

final class ThrowingProgress: ProgressListener {
    func onProgress(progress: RankProgress) throws { throw ListenerError() }
}

final class Lines: LogSink, @unchecked Sendable {
    let lines = Collector<(LogLevel, String)>()
    func log(level: LogLevel, message: String) { lines.add((level, message)) }
}

final class ThrowingSink: LogSink {
    func log(level: LogLevel, message: String) throws { throw ListenerError() }
}

final class Stages: LoadListener, @unchecked Sendable {
    let seen = Collector<(LoadStage, Float)>()
    let onEach: (@Sendable (LoadStage) -> Void)?
    init(_ onEach: (@Sendable (LoadStage) -> Void)? = nil) { self.onEach = onEach }
    func onLoadProgress(stage: LoadStage, fraction: Float) {
        seen.add((stage, fraction))
        onEach?(stage)
    }
}

// MARK: - tests

let history = ["m001", "m002"]

await test("EngineConfig() is defaultEngineConfig(), the runtime defaults") {
    let c = defaultEngineConfig()
    try check(EngineConfig() == c, "EngineConfig() = \(EngineConfig()), defaultEngineConfig() = \(c)")
    try check(c.contextSize == 2048 && c.batchSize == 512 && c.maxSequences == 32, "\(c)")
    try check(c.kvType == nil && c.flashAttention && c.verifyChecksum && c.digestCacheDir == nil && c.threads == 0, "\(c)")
    let e = try Engine.open(modelPath: model, packPath: pack, config: EngineConfig(threads: 2))
    var want = c
    want.threads = 2
    want.backend = .auto
    want.kvType = .f16
    try check(e.config() == want, "\(e.config())")
    // Signed FFI integers: a negative count is refused with the setting named.
    let neg = try badRequest(await thrown { try Engine.open(modelPath: model, packPath: pack, config: EngineConfig(maxContexts: -1)) })
    try check(neg.kind == .invalidArgument && neg.field == "max_contexts", "\(neg)")
}

let engine = try! Engine.open(modelPath: model, packPath: pack, config: config())

await test("devices and the CPU backend") {
    try check(devices().contains { $0.backend == .cpu && !$0.offloads }, "\(devices())")
    var c = config()
    c.backend = .cpu
    let info = try Engine.open(modelPath: model, packPath: pack, config: c).backend()
    try check(info.kind == .cpu && info.requested == .cpu && info.device == nil && info.gpuLayers == 0 && !info.fellBack, "\(info)")
}

await test("catalog lookups") {
    try check(engine.catalogSize() == Int64(ids.count), "catalogSize \(engine.catalogSize()), csv has \(ids.count)")
    for (id, title) in catalog {
        try check(try engine.itemTitle(id: id) == title, "itemTitle(\(id))")
    }
    let item = try engine.item(id: catalog[0].id)
    try check(item.id == catalog[0].id && item.index == 0 && item.title == catalog[0].title, "\(item)")
    try check(try engine.itemAt(index: 0) == item, "itemAt(0)")
    let e = try badRequest(await thrown { try engine.itemAt(index: Int32(ids.count)) })
    try check(e.kind == .invalidArgument && e.field == "index" && e.reason.contains("out of range"), "\(e)")
    let u = try badRequest(await thrown { try engine.itemTitle(id: "no-such-item") })
    try check(u.kind == .unknownItem && u.itemId == "no-such-item", "\(u)")
    try check(engine.softPrompts() == ["default"], "\(engine.softPrompts())")
}

await test("whole catalog: sorted and equal to the Rust CLI") {
    let r = try engine.rank(request: RankRequest(history: history))
    try check(r.items.count == ids.count, "\(r.items.count) items")
    try assertSorted(r)
    try assertMatches(r, try cliRank(history))
    try check(r.stats.candidates == Int64(ids.count) && r.stats.decodeCalls > 0, "\(r.stats)")
    let mode = engine.scoringMode()
    for it in r.items {
        try check(abs(it.meanLogprob - it.logprob / Double(it.nTokens)) < 1e-9, "\(it)")
        try check(it.score == (mode == .sum ? it.logprob : it.meanLogprob), "\(it) under \(mode)")
    }
}

await test("candidates + topK equal the Rust CLI (blocking and DelrecMobile async)") {
    let cands = ["m010", "m003", "m020", "m007", "m030"]
    let h = ["m005", "m001", "m009"]
    let ref = try cliRank(h, candidates: cands, topK: 3)
    let r = try engine.rank(request: RankRequest(history: h, candidates: cands, topK: 3))
    try check(r.items.count == 3, "\(r.items.count) items")
    try assertSorted(r)
    try assertMatches(r, ref)
    try assertMatches(try await engine.rank(history: h, candidates: cands, topK: 3), ref)
}

await test("excludeHistory leaves the history out") {
    let r = try engine.rank(request: RankRequest(history: history, excludeHistory: true))
    try check(r.items.count == ids.count - 2 && !r.items.contains { history.contains($0.id) }, "\(r.items.map(\.id))")
}

await test("session: push then rank equals a fresh rank and the CLI, reusing the prefix") {
    let s = try engine.session(softPrompt: nil)
    for h in history { try s.push(id: h) }
    let h0 = try s.history()
    try check(h0 == history, "\(h0)")
    let first = try s.rank(request: RankRequest(topK: 10))
    try assertMatches(first, pairs(try engine.rank(request: RankRequest(history: history, topK: 10))))
    try s.push(id: "m003")
    let second = try s.rank(request: RankRequest())
    try check(second.stats.prefixReused > 0, "nothing reused: \(second.stats)")
    try assertMatches(second, try cliRank(history + ["m003"]))
    try s.setHistory(ids: ["m004"])
    try assertMatches(try s.rank(request: RankRequest()), try cliRank(["m004"]))
    let e = try badRequest(await thrown { try s.push(id: "m999") })
    try check(e.kind == .unknownItem && e.itemId == "m999", "\(e)")
    try check(try s.history() == ["m004"], "a rejected push changed the history")
    let sp = try badRequest(await thrown { try engine.session(softPrompt: "nope") })
    try check(sp.kind == .unknownSoftPrompt && sp.field == "nope" && sp.reason.contains("default"), "\(sp)")
}

await test("DelrecMobile session: openSession, push, rank equal a fresh rank") {
    let s = try await engine.openSession()
    try await s.push("m001")
    try await s.push("m002", eager: RankRequest(topK: 5))
    let progress = Collector<RankProgress>()
    let r = try await s.rank(RankRequest(topK: 5), progress: { progress.add($0) })
    try assertMatches(r, try cliRank(history, topK: 5))
    // The eager push decoded the prompt: the rank decoded candidate rows only.
    try check(r.stats.prefixReused == r.stats.prefixRows, "\(r.stats)")
    try check(!progress.all.isEmpty, "no progress")
    try assertMatches(try await s.rank(), pairs(try engine.rank(request: RankRequest(history: history))))
    let e = try badRequest(await thrown { try await s.push("m999") })
    try check(e.kind == .unknownItem && e.itemId == "m999", "\(e)")
}

await test("concurrent ranks on one engine agree (threads and Swift Tasks)") {
    let want = pairs(try engine.rank(request: RankRequest(history: history)))
    let results = Collector<Result<Ranking, Error>>()
    DispatchQueue.concurrentPerform(iterations: 4) { _ in
        results.add(Result { try engine.rank(request: RankRequest(history: history)) })
    }
    try check(results.all.count == 4)
    for r in results.all { try assertMatches(try r.get(), want, tol: 1e-9) }
    let rankings = try await withThrowingTaskGroup(of: Ranking.self) { group in
        for _ in 0..<4 { group.addTask { try await engine.rank(RankRequest(history: history)) } }
        var all: [Ranking] = []
        for try await r in group { all.append(r) }
        return all
    }
    try check(rankings.count == 4)
    for r in rankings { try assertMatches(r, want, tol: 1e-9) }
}

// --- typed errors: the case and its fields, and a readable localizedDescription ---

await test("unknown history id -> BadRequest(.unknownItem) with the id; localizedDescription is the reason") {
    let err = await (try? thrown { try engine.rank(request: RankRequest(history: ["m001", "m999"])) })
    guard let err else { throw Failure("nothing thrown") }
    let e = try badRequest(err)
    try check(e.kind == .unknownItem && e.itemId == "m999" && e.reason.contains("m999"), "\(e)")
    try check(err.localizedDescription == e.reason, "localizedDescription: \(err.localizedDescription)")
    try check(!err.localizedDescription.contains("DelrecFFI") && !err.localizedDescription.contains("BadRequest("), err.localizedDescription)
    let d = err as! DelrecError
    try check(d.reason == e.reason && d.errorDescription == e.reason, "\(d.reason)")
    try check(d.recoverySuggestion == "Fix the request or the engine configuration.", "\(String(describing: d.recoverySuggestion))")
    // The same through the async wrapper (not turned into CancellationError).
    let a = try badRequest(await thrown { try await engine.rank(history: ["no-such-item"]) })
    try check(a.kind == .unknownItem && a.itemId == "no-such-item", "\(a)")
}

await test("unknown candidate, empty history/candidates, duplicate, topK 0, unknown soft prompt -> BadRequest of each kind") {
    let u = try badRequest(await thrown { try engine.rank(request: RankRequest(history: history, candidates: ["m003", "zzz"])) })
    try check(u.kind == .unknownItem && u.itemId == "zzz", "\(u)")
    let h = try badRequest(await thrown { try engine.rank(request: RankRequest()) })
    try check(h.kind == .emptyHistory && h.reason.contains("history"), "\(h)")
    let c = try badRequest(await thrown { try engine.rank(request: RankRequest(history: history, candidates: [])) })
    try check(c.kind == .emptyCandidates, "\(c)")
    let d = try badRequest(await thrown { try engine.rank(request: RankRequest(history: history, candidates: ["m003", "m004", "m003"])) })
    try check(d.kind == .duplicateCandidate && d.itemId == "m003", "\(d)")
    let k = try badRequest(await thrown { try engine.rank(request: RankRequest(history: history, topK: 0)) })
    try check(k.kind == .invalidArgument && k.field == "top_k", "\(k)")
    let s = try badRequest(await thrown { try engine.rank(request: RankRequest(history: history, softPrompt: "x")) })
    try check(s.kind == .unknownSoftPrompt && s.field == "x", "\(s)")
}

await test("bad files -> BadFile(.io / .invalid / .mismatch) with path, field and both values") {
    let m = try badFile(await thrown { try Engine.open(modelPath: "/nonexistent/model.gguf", packPath: pack, config: config()) })
    try check(m.kind == .io && m.path == "/nonexistent/model.gguf", "\(m)")
    let p = try badFile(await thrown { try Engine.open(modelPath: model, packPath: "/nonexistent/pack.gguf", config: config()) })
    try check(p.kind == .io && p.path == "/nonexistent/pack.gguf", "\(p)")
    let i = try badFile(await thrown { try Engine.open(modelPath: catalogPath, packPath: pack, config: config()) })
    try check(i.kind == .invalid && (i.path ?? "").hasSuffix("catalog.csv"), "\(i)")
    let err = try await thrown { try await Engine.open(model: URL(fileURLWithPath: model), pack: URL(fileURLWithPath: otherPack), config: config()) }
    let x = try badFile(err)
    try check(x.kind == .mismatch && x.field == "architecture" && x.packValue == "qwen2" && x.modelValue == "llama", "\(x)")
    try check(err.localizedDescription == x.reason && (err as! DelrecError).recoverySuggestion == "Replace or rebuild the model or pack file.", err.localizedDescription)
}

await test("bad config, tiny context, memory limit -> BadRequest / Capacity with fields") {
    var c = config()
    c.maxSequences = 1
    let b = try badRequest(await thrown { try Engine.open(modelPath: model, packPath: pack, config: c) })
    try check(b.kind == .invalidArgument && b.field == "max_sequences", "\(b)")
    c = config()
    c.contextSize = 16
    let small = try Engine.open(modelPath: model, packPath: pack, config: c)
    let e = try await thrown { try small.rank(request: RankRequest(history: Array(ids.prefix(40)))) }
    guard case let .Capacity(resource, needed, available, reason)? = e as? DelrecError else { throw Failure("got \(e)") }
    try check(resource == .contextCells && needed > available && available >= 16 && reason.contains("context"), "\(e)")
    c = config()
    c.memoryLimitBytes = 1 << 20
    let m = try await thrown { try Engine.open(modelPath: model, packPath: pack, config: c) }
    guard case let .Capacity(res, need, avail, _)? = m as? DelrecError else { throw Failure("got \(m)") }
    try check(res == .memory && need > avail && avail == 1 << 20, "\(m)")
}

await test("every context held by a session -> Busy after contextWaitMs; a released session frees it") {
    var c = config()
    c.maxContexts = 1
    c.contextWaitMs = 100
    let e = try Engine.open(modelPath: model, packPath: pack, config: c)
    var s: Session? = try e.session(softPrompt: nil)
    let t0 = nowMs()
    let busy = try await thrown { try e.rank(request: RankRequest(history: history, topK: 3)) }
    let ms = nowMs() - t0
    guard case let .Busy(contexts, waitedMs, _)? = busy as? DelrecError else { throw Failure("got \(busy)") }
    try check(contexts == 1 && waitedMs >= 100 && ms < 5000, "\(busy) after \(ms) ms")
    try check(s != nil)
    s = nil // Swift frees the session (and its context) when the last reference goes
    try check(try e.rank(request: RankRequest(history: history, topK: 3)).items.count == 3, "context not returned")
}

// --- cancellation and deadlines ---

await test("a cancelled token -> Cancelled; the async wrapper turns it into CancellationError") {
    let token = CancelToken()
    try check(!token.isCancelled())
    token.cancel()
    try check(token.isCancelled())
    let e = try await thrown { try engine.rank(request: RankRequest(history: history, cancel: token)) }
    guard case let .Cancelled(reason)? = e as? DelrecError else { throw Failure("got \(e)") }
    try check(reason == "cancelled", reason)
    let a = try await thrown { try await engine.rank(RankRequest(history: history, cancel: token)) }
    try check(a is CancellationError, "got \(String(reflecting: a))")
    try check(try engine.rank(request: RankRequest(history: history, topK: 1)).items.count == 1, "engine broken after cancel")
}

await test("timeoutMs 0 -> DeadlineExceeded") {
    let e = try await thrown { try engine.rank(request: RankRequest(history: history, timeoutMs: 0)) }
    guard case let .DeadlineExceeded(reason)? = e as? DelrecError else { throw Failure("got \(e)") }
    try check(reason.contains("deadline") && e.localizedDescription == reason, reason)
}

await test("Task cancellation stops a long whole-catalog async rank promptly -> CancellationError") {
    let long = RankRequest(history: Array(ids.prefix(40)), plan: .naive)
    let t0 = nowMs()
    let full = try engine.rank(request: long)
    let fullMs = nowMs() - t0
    let reports = Collector<RankProgress>()
    // Detached: a plain Task here would inherit the main actor that this code holds.
    let task = Task.detached { () -> Ranking in
        try await engine.rank(long, progress: { reports.add($0) })
    }
    while reports.all.isEmpty { try await Task.sleep(nanoseconds: 1_000_000) }
    try await Task.sleep(nanoseconds: 20_000_000)
    let t1 = nowMs()
    task.cancel()
    let result = await task.result
    let stopMs = nowMs() - t1
    print("      whole-catalog naive rank: \(Int(fullMs)) ms; Task.cancel -> stopped: \(String(format: "%.1f", stopMs)) ms")
    try check(fullMs > 100, "the rank (\(fullMs) ms) is shorter than the bound: it shows nothing")
    switch result {
    case .success(let r): throw Failure("not cancelled: \(r.items.count) items")
    case .failure(let e): try check(e is CancellationError, "got \(String(reflecting: e))")
    }
    try check(stopMs < 100, "took \(stopMs) ms to stop")
    try check(full.items.count == ids.count)
    try check(try engine.rank(request: RankRequest(history: history, topK: 1)).items.count == 1, "engine broken after cancel")
    // A task cancelled before the call starts throws CancellationError without ranking.
    let pre = Task.detached { () -> Ranking in
        withUnsafeCurrentTask { $0?.cancel() }
        return try await engine.rank(history: history)
    }
    let preResult = await pre.result
    guard case .failure(let pe) = preResult, pe is CancellationError else { throw Failure("pre-cancelled task: \(preResult)") }
}

// --- progress, logs ---

await test("rank progress: one report per decode, ending at the counters; a throwing listener is survived") {
    let listener = Progress()
    let r = try engine.rank(request: RankRequest(history: history, progress: listener))
    let seen = listener.seen.all
    try check(Int64(seen.count) == r.stats.decodeCalls, "\(seen.count) reports, \(r.stats.decodeCalls) decodes")
    for (a, b) in zip(seen, seen.dropFirst()) {
        try check(b.decodedRows > a.decodedRows && b.plannedRows >= a.plannedRows, "\(seen)")
    }
    try check(seen.last?.decodedRows == r.stats.decodedRows && seen.allSatisfy { $0.decodedRows <= $0.plannedRows }, "\(seen)")
    try assertMatches(try engine.rank(request: RankRequest(history: history, progress: ThrowingProgress())), pairs(r), tol: 0)
    // DelrecMobile's closure form, through the async rank.
    let viaClosure = Collector<RankProgress>()
    let a = try await engine.rank(RankRequest(history: history), progress: { viaClosure.add($0) })
    try assertMatches(a, pairs(r), tol: 0)
    try check(Int64(viaClosure.all.count) == a.stats.decodeCalls && viaClosure.all.last?.decodedRows == a.stats.decodedRows, "\(viaClosure.all)")
}

await test("open progress: verify then load, to 1.0; a cancelled open -> Cancelled") {
    let stages = Stages()
    let e = try Engine.openWithProgress(modelPath: model, packPath: pack, config: config(), progress: stages, cancel: nil)
    try check(try e.rank(request: RankRequest(history: history, topK: 3)).items.count == 3)
    let load = stages.seen.all.filter { $0.0 == .load }.map(\.1)
    try check(!load.isEmpty && load.last == 1.0 && zip(load, load.dropFirst()).allSatisfy { $1 >= $0 }, "\(stages.seen.all)")
    let token = CancelToken()
    let stopper = Stages { if $0 == .load { token.cancel() } }
    let c = try await thrown { try Engine.openWithProgress(modelPath: model, packPath: pack, config: config(), progress: stopper, cancel: token) }
    guard case .Cancelled? = c as? DelrecError else { throw Failure("got \(c)") }
}

await test("DelrecMobile Engine.open: progress in 0...1 rising to 1; Task cancellation -> CancellationError") {
    let fractions = Collector<Float>()
    let e = try await Engine.open(model: URL(fileURLWithPath: model), pack: URL(fileURLWithPath: pack), config: config()) { fractions.add($0) }
    let f = fractions.all
    try check(!f.isEmpty && f.last == 1.0 && f.allSatisfy { (0...1).contains($0) } && zip(f, f.dropFirst()).allSatisfy { $1 >= $0 }, "\(f)")
    try assertMatches(try await e.rank(history: history, topK: 5), try cliRank(history, topK: 5))
    // Cancel the task from the progress callback: the load stops.
    let holder = Collector<Task<Engine, Error>>()
    let ready = DispatchSemaphore(value: 0)
    let task = Task.detached { () -> Engine in
        ready.wait() // until `holder` has the task
        return try await Engine.open(model: URL(fileURLWithPath: model), pack: URL(fileURLWithPath: pack), config: config()) { _ in
            holder.all.first?.cancel()
        }
    }
    holder.add(task)
    ready.signal()
    let r = await task.result
    guard case .failure(let err) = r, err is CancellationError else { throw Failure("cancelled open: \(r)") }
}

await test("recommend (the cascade) equals the Rust CLI; async recommend, add(itemId:title:) and a duplicate id") {
    let e = try await Engine.open(model: URL(fileURLWithPath: model), pack: URL(fileURLWithPath: seqPack), config: config())
    try check(e.hasSequentialModel() && !engine.hasSequentialModel(), "hasSequentialModel")
    let r = try await e.recommend(RecommendRequest(history: history, n: 5, retrieve: 8))
    let ref = try cliRecommend(history, n: 5, retrieve: 8)
    try check(r.items.map(\.id) == ref.map(\.id), "order \(r.items.map(\.id)) vs CLI \(ref.map(\.id))")
    for (it, want) in zip(r.items, ref) {
        try check(abs(it.score - want.score) < 1e-4 && it.llmScore != nil, "\(it.id): \(it.score) vs \(want.score)")
    }
    try check(r.stats.retrieved == 8 && r.stats.rank?.candidates == 8, "\(r.stats)")
    let s = try await e.openSession()
    try s.setHistory(ids: history)
    try check(try await s.recommend(RecommendRequest(n: 5, retrieve: 8)).items.map(\.id) == r.items.map(\.id), "session differs")
    let none = try badRequest(await thrown { try await engine.recommend(RecommendRequest(history: history)) })
    try check(none.kind == .noSequentialModel, "\(none)")
    let before = e.catalogSize()
    let a = try await e.add(itemId: "new-1", title: "Neon Harbor (2031)")
    let title = try e.item(id: "new-1").title
    try check(Int64(a.index) == before && e.catalogSize() == before + 1 && title == "Neon Harbor (2031)", "\(a), \(title)")
    let ranked = try await e.rank(history: history, candidates: ["new-1", "m003"])
    try check(ranked.items.contains { $0.id == "new-1" }, "added item not ranked")
    let d = try badRequest(await thrown { try await e.add(itemId: "m001", title: "Again") })
    try check(d.kind == .duplicateItem && d.itemId == "m001", "\(d)")
}

await test("setLogSink: a Swift LogSink gets llama.cpp's lines; a normal cancel logs no error; a throwing sink is survived") {
    let sink = Lines()
    setLogSink(sink: sink, minLevel: .debug)
    defer { setLogSink(sink: nil, minLevel: .debug) }
    let e = try Engine.open(modelPath: model, packPath: pack, config: config())
    try check(sink.lines.all.contains { $0.1.contains("llama_model_load") || $0.1.contains("print_info") }, "\(sink.lines.all.prefix(5))")
    let before = sink.lines.all.count
    let token = CancelToken()
    let cancelAtFirst = Progress { _ in token.cancel() }
    let c = try await thrown { try e.rank(request: RankRequest(history: Array(ids.prefix(40)), plan: .naive, cancel: token, progress: cancelAtFirst)) }
    guard case .Cancelled? = c as? DelrecError else { throw Failure("got \(c)") }
    let after = sink.lines.all.dropFirst(before)
    try check(!after.contains { $0.0 == .error || $0.0 == .warn }, "a cancel logged: \(Array(after))")
    setLogSink(sink: ThrowingSink(), minLevel: .debug)
    let e2 = try Engine.open(modelPath: model, packPath: pack, config: config())
    try check(try e2.rank(request: RankRequest(history: history, topK: 3)).items.count == 3, "engine broken by a throwing sink")
}

await test("the README's Swift example runs (ReadmeSnippet.swift, made by scripts/swift.sh)") {
    try await readmeSnippet(modelURL: URL(fileURLWithPath: model), packURL: URL(fileURLWithPath: pack))
}

print("\(passed) passed, \(failed) failed")
exit(failed == 0 ? 0 : 1)
