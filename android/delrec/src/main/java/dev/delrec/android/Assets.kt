package dev.delrec.android

import android.content.res.AssetManager
import dev.delrec.CancelToken
import dev.delrec.Engine
import dev.delrec.EngineConfig
import dev.delrec.LoadListener
import dev.delrec.LoadStage
import dev.delrec.runCancellableOpen
import kotlinx.coroutines.CoroutineDispatcher
import kotlinx.coroutines.Dispatchers

/**
 * Opens a model and a pack straight from the APK's assets, read in place (no copy in filesDir).
 * The assets must be stored uncompressed: in the app's build.gradle.kts,
 * `androidResources { noCompress += listOf("gguf") }` (a compressed asset makes `openFd` throw
 * `FileNotFoundException`). The model is mapped when its offset in the APK is a multiple of 64,
 * else read into memory (RAM instead of storage): align it with `zipalign -p 64` or keep large
 * models as downloads (`installFile`) instead. Suspends on [dispatcher]; cancelling the coroutine
 * stops the open.
 */
suspend fun AssetManager.openEngine(
    modelAsset: String,
    packAsset: String,
    config: EngineConfig = EngineConfig(),
    dispatcher: CoroutineDispatcher = Dispatchers.IO,
    onProgress: (LoadStage, Float) -> Unit = { _, _ -> },
): Engine {
    val listener = object : LoadListener {
        override fun onLoadProgress(stage: LoadStage, fraction: Float) = onProgress(stage, fraction)
    }
    return runCancellableOpen(dispatcher) { token: CancelToken ->
        // The engine duplicates the descriptors: ours close when the block ends.
        openFd(modelAsset).use { model ->
            openFd(packAsset).use { pack ->
                Engine.openFd(
                    model.parcelFileDescriptor.fd, model.startOffset, model.length,
                    pack.parcelFileDescriptor.fd, pack.startOffset, pack.length,
                    config, listener, token,
                )
            }
        }
    }
}
