// Android build of delrec: `:delrec` (library: generated Kotlin + libdelrec_ffi.so per ABI) and
// `:sample` (a one-screen app). See README.md for what has and has not been built.
plugins {
    id("com.android.library") version "8.7.3" apply false
    id("com.android.application") version "8.7.3" apply false
    id("org.jetbrains.kotlin.android") version "2.1.0" apply false
}
