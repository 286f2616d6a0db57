package dev.delrec.android

import android.util.Log
import dev.delrec.LogLevel
import dev.delrec.LogSink
import dev.delrec.setLogSink

/**
 * Writes the runtime's log, and llama.cpp's (the runtime routes it here), to logcat under [tag].
 *
 * Called on whichever thread logs, often a native one (JNA attaches it): `android.util.Log` is
 * thread-safe and cheap, so nothing is queued here.
 */
class LogcatSink(private val tag: String = TAG) : LogSink {
    override fun log(level: LogLevel, message: String) {
        val priority = when (level) {
            LogLevel.DEBUG -> Log.DEBUG
            LogLevel.INFO -> Log.INFO
            LogLevel.WARN -> Log.WARN
            LogLevel.ERROR -> Log.ERROR
        }
        // llama.cpp's lines end in '\n'; logcat adds its own.
        Log.println(priority, tag, message.trimEnd('\n'))
    }

    companion object {
        const val TAG = "delrec"

        /** Sends the log to logcat from now on (process-wide); below [minLevel] nothing is sent. */
        fun install(minLevel: LogLevel = LogLevel.INFO) = setLogSink(LogcatSink(), minLevel)
    }
}
