package dev.delrec.sample

import android.app.Activity
import android.os.Bundle
import android.widget.ScrollView
import android.widget.TextView
import dev.delrec.DelrecException
import dev.delrec.Engine
import dev.delrec.RankRequest
import dev.delrec.defaultEngineConfig
import java.io.File
import kotlin.concurrent.thread

/** Opens the bundled model + pack and shows the top 10 items for the first two catalog items. */
class MainActivity : Activity() {
    private var engine: Engine? = null

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        val text = TextView(this).apply {
            setPadding(32, 32, 32, 32)
            text = "Loading…"
        }
        setContentView(ScrollView(this).apply { addView(text) })
        // Opening and ranking block: keep them off the UI thread.
        thread(name = "delrec") {
            val message = try {
                rank()
            } catch (e: DelrecException) {
                "${e::class.simpleName}: ${e.message}"
            }
            runOnUiThread { text.text = message }
        }
    }

    private fun rank(): String {
        val config = defaultEngineConfig().copy(threads = 4u)
        val engine = Engine.open(asset("model.gguf").path, asset("pack.gguf").path, config).also { engine = it }
        val history = listOf(engine.itemAt(0u).id, engine.itemAt(1u).id)
        val t0 = System.nanoTime()
        val ranking = engine.rank(RankRequest(history = history, topK = 10u, excludeHistory = true))
        val ms = (System.nanoTime() - t0) / 1e6
        return buildString {
            append("History: ${history.joinToString { engine.itemTitle(it) }}\n\n")
            ranking.items.forEachIndexed { i, item -> append("${i + 1}. ${item.title}  (${"%.3f".format(item.score)})\n") }
            append("\n${ranking.stats.candidates} candidates in ${"%.1f".format(ms)} ms")
        }
    }

    /** Copies an asset to app storage once; the engine memory-maps real files. */
    private fun asset(name: String): File {
        val file = File(filesDir, name)
        if (!file.exists()) {
            val tmp = File(filesDir, "$name.part")
            assets.open(name).use { input -> tmp.outputStream().use { input.copyTo(it) } }
            tmp.renameTo(file)
        }
        return file
    }

    override fun onDestroy() {
        engine?.close()
        super.onDestroy()
    }
}
