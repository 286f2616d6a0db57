// Conveniences over the generated DelrecFFI API. The generated calls block (llama.cpp decodes
// on the calling thread), so these move them off the caller's thread/actor.

import DelrecFFI
import Foundation

public extension Engine {
    /// Opens an engine off the caller's thread.
    static func open(model: URL, pack: URL, config: EngineConfig = defaultEngineConfig()) async throws -> Engine {
        try await Task.detached(priority: .userInitiated) {
            try Engine.open(modelPath: model.path, packPath: pack.path, config: config)
        }.value
    }

    /// Ranks off the caller's thread; cancelling the Swift task cancels the ranking.
    func rank(history: [String], candidates: [String]? = nil, topK: UInt32? = nil) async throws -> Ranking {
        let token = CancelToken()
        let request = RankRequest(history: history, candidates: candidates, topK: topK, cancel: token)
        return try await withTaskCancellationHandler {
            try await Task.detached(priority: .userInitiated) { try self.rank(request: request) }.value
        } onCancel: {
            token.cancel()
        }
    }
}
