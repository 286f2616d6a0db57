package dev.delrec.sample

import android.content.Context
import dev.delrec.DelrecException
import dev.delrec.installFile
import java.io.File
import java.io.FileNotFoundException
import java.io.IOException

/**
 * The path of asset [name] as a real file in app storage, copied there on first use: the engine
 * memory-maps the model and pack, and an asset inside the APK is not a file. Blocking: call it on
 * Dispatchers.IO. (An app that downloads its model does the same with the download.)
 */
fun Context.installAsset(name: String): File {
    val file = File(filesDir, name)
    if (file.exists()) return file
    val part = File(filesDir, "$name.part")
    try {
        assets.open(name).use { input -> part.outputStream().use { input.copyTo(it) } }
        // An atomic rename that refuses a file that is not GGUF: a half-copied file (the app was
        // killed mid-copy) is never taken for the model on the next launch.
        installFile(part.path, file.path)
    } catch (e: FileNotFoundException) {
        throw IOException("$name is not in the APK: put it in sample/src/main/assets (see the README there)", e)
    } finally {
        part.delete()
    }
    return file
}

/**
 * The runtime's own sentence, e.g. `bad request: unknown item id "m999"`. (Kotlin's `message`
 * lists every field: `kind=UNKNOWN_ITEM, itemId=m999, field=null, reason=…`.)
 */
fun DelrecException.reasonText(): String = when (this) {
    is DelrecException.BadRequest -> reason
    is DelrecException.BadFile -> reason
    is DelrecException.Capacity -> reason
    is DelrecException.Cancelled -> reason
    is DelrecException.DeadlineExceeded -> reason
    is DelrecException.Busy -> reason
    is DelrecException.Internal -> reason
}
