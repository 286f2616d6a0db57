// Readable errors: `error.localizedDescription` is the runtime's own sentence, e.g.
// `bad request: unknown item id "m999"`, instead of `DelrecFFI.DelrecError.BadRequest(kind: …)`.
// UniFFI's conformance is switched off for this (ios/uniffi-ios.toml), so this one is the only one.

import DelrecFFI
import Foundation

extension DelrecError: LocalizedError {
    public var errorDescription: String? { reason }

    /// What the app can do about it, by group.
    public var recoverySuggestion: String? {
        switch self {
        case .BadRequest: return "Fix the request or the engine configuration."
        case .BadFile: return "Replace or rebuild the model or pack file."
        case .Capacity: return "Configure more (context size, memory limit) or ask for less."
        case .Cancelled, .DeadlineExceeded: return nil
        case .Busy: return "Try again later, or close a Session."
        case .Internal: return "This is a bug in delrec; please report it."
        }
    }
}

public extension DelrecError {
    /// The runtime's message, which every case carries as its last field.
    var reason: String {
        switch self {
        case let .BadRequest(_, _, _, reason): return reason
        case let .BadFile(_, _, _, _, _, reason): return reason
        case let .Capacity(_, _, _, reason): return reason
        case let .Cancelled(reason): return reason
        case let .DeadlineExceeded(reason): return reason
        case let .Busy(_, _, reason): return reason
        case let .Internal(reason): return reason
        }
    }
}
