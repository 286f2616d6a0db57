import org.jetbrains.kotlin.gradle.dsl.JvmTarget

plugins {
    id("com.android.library")
    id("org.jetbrains.kotlin.android")
}

// Written by ../build-rust.sh: kotlin/dev/delrec/delrec_ffi.kt and jniLibs/<abi>/*.so
val uniffiDir = layout.buildDirectory.dir("generated/uniffi")
val abis = (findProperty("delrec.abis") as String).split(",")
val pinnedNdk = findProperty("delrec.ndkVersion") as String

android {
    namespace = "dev.delrec"
    compileSdk = 35
    // The same NDK build-rust.sh links with (gradle.properties): AGP strips the .so files with it.
    ndkVersion = pinnedNdk

    defaultConfig {
        minSdk = 24
        consumerProguardFiles("consumer-rules.pro")
        ndk { abiFilters += abis }
    }

    sourceSets["main"].java.srcDir(uniffiDir.map { it.dir("kotlin") })
    // Hand-written Kotlin over the generated API (openEngine, rankAsync, rankFlow, ...), the same
    // sources the JVM tests compile.
    sourceSets["main"].java.srcDir("../../bindings/kotlin/src")
    sourceSets["main"].jniLibs.srcDir(uniffiDir.map { it.dir("jniLibs") })

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
}

kotlin {
    compilerOptions { jvmTarget.set(JvmTarget.JVM_17) }
}

// Cross-compiles the Rust library with cargo-ndk and generates the Kotlin bindings.
val buildRust by tasks.registering(Exec::class) {
    description = "cargo ndk build of delrec-ffi + uniffi-bindgen (Kotlin)"
    workingDir = rootDir.parentFile
    environment("DELREC_ANDROID_ABIS", abis.joinToString(" "))
    environment("DELREC_ANDROID_OUT", uniffiDir.get().asFile.absolutePath)
    environment("DELREC_NDK_VERSION", pinnedNdk)
    commandLine("bash", "android/build-rust.sh")
    inputs.files(fileTree(rootDir.parentFile) {
        include("bindings/src/**", "bindings/Cargo.toml", "bindings/uniffi.toml", "runtime/src/**", "runtime/Cargo.toml")
        include("Cargo.lock", "android/build-rust.sh", "android/uniffi-android.toml", "android/gradle.properties")
    })
    outputs.dir(uniffiDir)
}
tasks.named("preBuild") { dependsOn(buildRust) }

dependencies {
    // The generated bindings call into the .so through JNA; the AAR carries JNA's own native part
    // (libjnidispatch.so). 5.19+: its native libraries are aligned for 16 KB pages, which Android 15+
    // devices may use; 5.14's x86_64 one is not (such a device cannot load it). `api`: the
    // generated public converters (RustBuffer, ...) extend JNA types.
    api("net.java.dev.jna:jna:5.19.1@aar")
    // The coroutine API of bindings/kotlin/src (suspend functions, Flow) is part of this library's API.
    api("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.11.0")
    // Used by the Android cleaner of the generated code (`android = true` in uniffi-android.toml).
    implementation("androidx.annotation:annotation:1.9.1")
}
