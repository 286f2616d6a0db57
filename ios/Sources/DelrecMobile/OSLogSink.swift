// The runtime's log (llama.cpp's included: the runtime routes it here) to the unified log, where
// Console.app and `log stream --predicate 'subsystem == "dev.delrec"'` show it.
// Apple platforms only (`os.Logger`); on Linux (scripts/swift.sh) this file compiles to nothing.

#if canImport(os)

import DelrecFFI
import os

/// A `LogSink` writing to `os.Logger`. Called on whichever thread logs (often a native one);
/// `Logger` is thread-safe, hence `@unchecked Sendable`.
public final class OSLogSink: LogSink, @unchecked Sendable {
    private let logger: Logger

    public init(subsystem: String = "dev.delrec", category: String = "runtime") {
        logger = Logger(subsystem: subsystem, category: category)
    }

    public func log(level: LogLevel, message: String) {
        // llama.cpp's lines end in "\n"; the unified log keeps lines apart itself. The text is
        // the library's own (paths, sizes, no user data), so it is logged as public.
        let text = message.hasSuffix("\n") ? String(message.dropLast()) : message
        switch level {
        case .debug: logger.debug("\(text, privacy: .public)")
        case .info: logger.info("\(text, privacy: .public)")
        case .warn: logger.warning("\(text, privacy: .public)")
        case .error: logger.error("\(text, privacy: .public)")
        }
    }

    /// Routes the log here from now on (process-wide); below `minLevel` nothing is sent.
    public static func install(minLevel: LogLevel = .info) {
        setLogSink(sink: OSLogSink(), minLevel: minLevel)
    }
}
#endif
