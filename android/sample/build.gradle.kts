import org.jetbrains.kotlin.gradle.dsl.JvmTarget

plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
    id("org.jetbrains.kotlin.plugin.compose")
}

android {
    namespace = "dev.delrec.sample"
    compileSdk = 35
    ndkVersion = findProperty("delrec.ndkVersion") as String

    defaultConfig {
        applicationId = "dev.delrec.sample"
        minSdk = 24
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
    }

    buildTypes {
        release {
            // R8 with the :delrec consumer rules (JNA, generated classes): `assembleRelease` and a
            // run of that APK are the check that the rules are enough.
            isMinifyEnabled = true
            proguardFiles(getDefaultProguardFile("proguard-android-optimize.txt"))
            signingConfig = signingConfigs.getByName("debug") // a sample: installable as built
        }
    }

    buildFeatures { compose = true }

    // The model and pack are copied out of the APK once (they must be files: they are mmapped).
    androidResources { noCompress += "gguf" }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
}

kotlin {
    compilerOptions { jvmTarget.set(JvmTarget.JVM_17) }
}

dependencies {
    implementation(project(":delrec"))
    // Releases of late 2024, which build with compileSdk 35 and AGP 8.7 (later ones want 36).
    implementation(platform("androidx.compose:compose-bom:2024.12.01"))
    implementation("androidx.compose.ui:ui")
    implementation("androidx.compose.material3:material3")
    implementation("androidx.activity:activity-compose:1.9.3")
    implementation("androidx.lifecycle:lifecycle-viewmodel-compose:2.8.7")
    implementation("androidx.lifecycle:lifecycle-runtime-compose:2.8.7")
}
