import org.jetbrains.kotlin.gradle.dsl.JvmTarget

plugins {
    id("com.android.library")
    id("org.jetbrains.kotlin.android")
}

// Written by ../build-rust.sh: kotlin/dev/delrec/delrec_ffi.kt and jniLibs/<abi>/*.so
val uniffiDir = layout.buildDirectory.dir("generated/uniffi")
val abis = (findProperty("delrec.abis") as String).split(",")

android {
    namespace = "dev.delrec"
    compileSdk = 35

    defaultConfig {
        minSdk = 24
        consumerProguardFiles("consumer-rules.pro")
        ndk { abiFilters += abis }
    }

    sourceSets["main"].java.srcDir(uniffiDir.map { it.dir("kotlin") })
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
    commandLine("bash", "android/build-rust.sh")
    inputs.files(fileTree(rootDir.parentFile) {
        include("bindings/src/**", "bindings/Cargo.toml", "bindings/uniffi.toml", "runtime/src/**", "runtime/Cargo.toml")
        include("Cargo.lock", "android/build-rust.sh", "android/uniffi-android.toml")
    })
    outputs.dir(uniffiDir)
}
tasks.named("preBuild") { dependsOn(buildRust) }

dependencies {
    // The generated bindings call into the .so through JNA; the AAR carries JNA's own native part.
    implementation("net.java.dev.jna:jna:5.14.0@aar")
    // Used by the Android cleaner of the generated code (`android = true` in uniffi-android.toml).
    implementation("androidx.annotation:annotation:1.9.1")
}
