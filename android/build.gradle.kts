// Android build of delrec: `:delrec` (library: generated Kotlin + libdelrec_ffi.so per ABI) and
// `:sample` (a one-screen Compose app). See README.md for what has and has not been built.
//
// Versions, and why these: AGP 8.7.3 needs Gradle >= 8.9 (gradle/wrapper pins 8.10.2). Kotlin
// 2.2.20 is the version kotlinx-coroutines 1.11.0 is compiled with and pulls its stdlib from
// (2.2.20); KGP 2.2.20 supports AGP 8.7 and Gradle 8.10. Compose's compiler plugin ships with
// Kotlin 2.x and takes Kotlin's version.
plugins {
    id("com.android.library") version "8.7.3" apply false
    id("com.android.application") version "8.7.3" apply false
    id("org.jetbrains.kotlin.android") version "2.2.20" apply false
    id("org.jetbrains.kotlin.plugin.compose") version "2.2.20" apply false
}
