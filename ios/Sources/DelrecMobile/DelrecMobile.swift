// Async conveniences over the generated DelrecFFI API.
//
// The generated calls block while llama.cpp works, so each one here runs on a GCD queue (not on
// Swift concurrency's cooperative pool: it has one thread per core and must not be blocked for
// the length of a ranking). Cancelling the calling Task cancels the call's CancelToken, and a call
// that then ends `DelrecError.Cancelled` throws `CancellationError`, as Swift code expects.

import DelrecFFI
import Foundation

/// Where the blocking calls run. Concurrent: one engine serves several calls at once (up to its
/// `maxContexts` contexts).
private let callQueue = DispatchQueue(label: "dev.delrec.calls", qos: .userInitiated, attributes: .concurrent)

/// Runs `body` on `callQueue`; cancelling the current task cancels `token`.
func offload<T>(cancel token: CancelToken? = nil, _ body: @escaping @Sendable () throws -> T) async throws -> T {
    try Task.checkCancellation()
    return try await withTaskCancellationHandler {
        do {
            return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, Error>) in
                callQueue.async { continuation.resume(with: Result { try body() }) }
            }
        } catch let error as DelrecError {
            if case .Cancelled = error { throw CancellationError() }
            throw error
        }
    } onCancel: {
        token?.cancel()
    }
}

/// Forwards load progress to a closure (UniFFI foreign-trait protocols are `AnyObject, Sendable`).
/// The stage (digest check, then llama.cpp's load) is folded into one fraction: verify is the
/// first half when it runs.
final class LoadRelay: LoadListener {
    let body: @Sendable (Float) -> Void
    init(_ body: @escaping @Sendable (Float) -> Void) { self.body = body }
    func onLoadProgress(stage: LoadStage, fraction: Float) {
        body(stage == .verify ? fraction / 2 : 0.5 + fraction / 2)
    }
}

/// Forwards ranking progress to a closure.
final class ProgressRelay: ProgressListener {
    let body: @Sendable (RankProgress) -> Void
    init(_ body: @escaping @Sendable (RankProgress) -> Void) { self.body = body }
    func onProgress(progress: RankProgress) { body(progress) }
}

extension RankRequest {
    /// A copy carrying a CancelToken (the request's own, or a new one) and `progress`.
    func prepared(progress: (@Sendable (RankProgress) -> Void)?) -> (RankRequest, CancelToken) {
        var request = self
        let token = request.cancel ?? CancelToken()
        request.cancel = token
        if let progress { request.progress = ProgressRelay(progress) }
        return (request, token)
    }
}

extension RecommendRequest {
    func prepared() -> (RecommendRequest, CancelToken) {
        var request = self
        let token = request.cancel ?? CancelToken()
        request.cancel = token
        return (request, token)
    }
}

public extension Engine {
    /// Opens a model and its pack off the caller's thread. `progress` gets the load's fraction
    /// (0...1) on a background thread. Cancelling the task stops the load (`CancellationError`).
    static func open(
        model: URL, pack: URL, config: EngineConfig = EngineConfig(),
        progress: (@Sendable (Float) -> Void)? = nil
    ) async throws -> Engine {
        let token = CancelToken()
        let listener = progress.map(LoadRelay.init)
        return try await offload(cancel: token) {
            try Engine.openWithProgress(
                modelPath: model.path, packPath: pack.path, config: config, progress: listener, cancel: token)
        }
    }

    /// Ranks off the caller's thread; `progress` is called on the ranking thread as rows decode.
    /// Cancelling the task cancels the ranking (`CancellationError`).
    func rank(_ request: RankRequest, progress: (@Sendable (RankProgress) -> Void)? = nil) async throws -> Ranking {
        let (request, token) = request.prepared(progress: progress)
        return try await offload(cancel: token) { try self.rank(request: request) }
    }

    /// `rank(_:)` for a history (and candidates; nil ranks the whole catalog).
    func rank(history: [String], candidates: [String]? = nil, topK: Int32? = nil) async throws -> Ranking {
        try await rank(RankRequest(history: history, candidates: candidates, topK: topK))
    }

    /// The cascade (sequential model, then the LLM) off the caller's thread; cancellable like `rank`.
    func recommend(_ request: RecommendRequest) async throws -> Recommendation {
        let (request, token) = request.prepared()
        return try await offload(cancel: token) { try self.recommend(request: request) }
    }

    /// Opens a session off the caller's thread (it may wait for a free context).
    func openSession(softPrompt: String? = nil) async throws -> Session {
        try await offload { try self.session(softPrompt: softPrompt) }
    }

    /// Adds an item to the catalog off the caller's thread (its title is tokenized, and embedded
    /// when the pack's sequential model can).
    func add(itemId id: String, title: String) async throws -> AddedItem {
        try await offload { try self.addItem(id: id, title: title) }
    }
}

public extension Session {
    /// Appends an item to the history off the caller's thread (it waits while a call on this
    /// session runs: calls on one session are serialized).
    func push(_ id: String) async throws {
        try await offload { try self.push(id: id) }
    }

    /// `push(_:)`, then the new history decoded right away (`prefill`), so the next rank with a
    /// request shaped like `request` decodes only candidate rows. Cancelling the task stops the
    /// decode (the item stays pushed).
    func push(_ id: String, eager request: RankRequest) async throws {
        try await push(id)
        let (request, token) = request.prepared(progress: nil)
        _ = try await offload(cancel: token) { try self.prefill(request: request) }
    }

    /// Ranks with the session's history; see `Engine.rank(_:progress:)`.
    func rank(_ request: RankRequest = RankRequest(), progress: (@Sendable (RankProgress) -> Void)? = nil) async throws -> Ranking {
        let (request, token) = request.prepared(progress: progress)
        return try await offload(cancel: token) { try self.rank(request: request) }
    }

    /// The cascade with the session's history; see `Engine.recommend(_:)`.
    func recommend(_ request: RecommendRequest = RecommendRequest()) async throws -> Recommendation {
        let (request, token) = request.prepared()
        return try await offload(cancel: token) { try self.recommend(request: request) }
    }
}
