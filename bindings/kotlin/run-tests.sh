#!/usr/bin/env bash
# Kotlin-on-the-JVM test of the UniFFI bindings, end to end:
#   1. builds the CLIs (reference + converter) and the delrec-ffi cdylib with its uniffi-bindgen,
#   2. generates the Kotlin and Swift bindings from the built library (and checks the Swift files),
#   3. fetches a Kotlin compiler (npm `kotlin-compiler`), JNA and kotlinx-coroutines (Maven
#      Central) into target/,
#   4. converts the llama-tiny fixture and builds its pack (plus a qwen2-tiny pack for mismatch,
#      and a pack with the fixture SASRec for the cascade),
#   5. compiles bindings/kotlin/tests/DelrecTest.kt with the generated sources and the
#      coroutine API (bindings/kotlin/src) and runs it; then compiles and runs the Java test
#      (bindings/kotlin/tests/JavaTest.java) against the same classes.
# Ends with the test program's "N passed, M failed"; exits non-zero on any failure.
#
# Needs: cargo, python3 (numpy, tokenizers: the fixture generator), a JDK >= 17, npm, mvn.
# Overrides: DELREC_FIXTURES (fixture dir), KOTLINC (a kotlinc to use), JNA_JAR (a jna.jar),
# COROUTINES_JAR (a kotlinx-coroutines-core-jvm jar).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
REL=$ROOT/target/release
CACHE=$ROOT/target/ffi-cache
OUT=$ROOT/target/ffi-test
FX=${DELREC_FIXTURES:-$ROOT/target/fixtures}
KOTLIN_VERSION=2.4.20
# 5.19: its Android native libraries are aligned for 16 KB pages (newer devices need that).
JNA_VERSION=5.19.1
COROUTINES_VERSION=1.11.0
mkdir -p "$CACHE" "$OUT"

step() { printf '\n== %s\n' "$*"; }

step "build: CLIs, delrec-ffi cdylib, uniffi-bindgen"
# One workspace-wide build: a per-package build resolves features differently and rebuilds llama.cpp.
cargo build --release --workspace --bins --lib
LIB=$REL/libdelrec_ffi.so
test -f "$LIB"

step "generate Kotlin and Swift bindings from $LIB"
GEN=$OUT/generated
rm -rf "$GEN"
"$REL/uniffi-bindgen" generate --library "$LIB" --language kotlin --language swift --out-dir "$GEN" --no-format
KT=$GEN/dev/delrec/delrec_ffi.kt
for f in "$KT" "$GEN/DelrecFFI.swift" "$GEN/delrec_ffiFFI.h" "$GEN/delrec_ffiFFI.modulemap"; do
    test -s "$f" || { echo "missing generated file $f"; exit 1; }
done
# The Swift API surface, textually (scripts/swift.sh compiles and runs it).
for sym in 'open class Engine' 'open class Session' 'open class CancelToken' 'enum DelrecError: Swift.Error' \
    'public struct RankRequest' 'public struct ScoredItem' 'public struct RecommendRequest' 'func recommend(' 'open class Base' 'func openPack(' 'public func defaultEngineConfig' 'public static func `open`'; do
    grep -q "$sym" "$GEN/DelrecFFI.swift" || { echo "Swift bindings lack '$sym'"; exit 1; }
done
echo "generated: $(cd "$GEN" && find . -type f | sort | tr '\n' ' ')"

step "toolchain: kotlinc $KOTLIN_VERSION (npm), JNA $JNA_VERSION, kotlinx-coroutines $COROUTINES_VERSION (Maven Central)"
if [ -z "${KOTLINC:-}" ]; then
    KOTLINC=$CACHE/npm/node_modules/kotlin-compiler/bin/kotlinc
    if ! "$KOTLINC" -version >/dev/null 2>&1 \
        || ! grep -q "\"version\": \"$KOTLIN_VERSION\"" "$CACHE/npm/node_modules/kotlin-compiler/package.json"; then
        npm install --prefix "$CACHE/npm" --no-audit --no-fund --loglevel=error "kotlin-compiler@$KOTLIN_VERSION"
    fi
fi
if [ -z "${JNA_JAR:-}" ]; then
    JNA_JAR=$CACHE/jna/jna-$JNA_VERSION.jar
    if [ ! -s "$JNA_JAR" ]; then
        mvn -q -B dependency:copy -Dartifact="net.java.dev.jna:jna:$JNA_VERSION" -DoutputDirectory="$CACHE/jna"
    fi
fi
if [ -z "${COROUTINES_JAR:-}" ]; then
    COROUTINES_JAR=$CACHE/coroutines/kotlinx-coroutines-core-jvm-$COROUTINES_VERSION.jar
    if [ ! -s "$COROUTINES_JAR" ]; then
        mvn -q -B dependency:copy -Dartifact="org.jetbrains.kotlinx:kotlinx-coroutines-core-jvm:$COROUTINES_VERSION" \
            -DoutputDirectory="$CACHE/coroutines"
    fi
fi
CP=$JNA_JAR:$COROUTINES_JAR
"$KOTLINC" -version 2>&1 | tail -1
java -version 2>&1 | head -1

step "fixtures: llama-tiny model + pack, qwen2-tiny pack"
python3 tests/fixtures/make_fixtures.py "$FX" >/dev/null
TEMPLATE=$'{soft:default}Recently watched:{history}.\nNext:{candidate}\n'
for m in llama qwen2; do
    "$REL/delrec-convert" model --hf "$FX/$m-tiny" --out "$OUT/$m.gguf" --outtype f32
    "$REL/delrec-convert" pack --model "$OUT/$m.gguf" --tokenizer "$FX/$m-tiny/tokenizer.json" \
        --catalog "$FX/catalog.csv" --soft-prompt "default=$FX/prompt-$m" --template "$TEMPLATE" \
        --out "$OUT/$m.pack.gguf"
done
"$REL/delrec-convert" pack --model "$OUT/llama.gguf" --tokenizer "$FX/llama-tiny/tokenizer.json" \
    --catalog "$FX/catalog.csv" --soft-prompt "default=$FX/prompt-llama" --template "$TEMPLATE" \
    --seq-model "$FX/sasrec-tiny.pth" --out "$OUT/llama.seq.pack.gguf"
"$REL/delrec-convert" adapter --base "$OUT/llama.gguf" --lora "$FX/lora-llama" --out "$OUT/llama.lora.gguf"
"$REL/delrec-convert" pack --model "$OUT/llama.gguf" --tokenizer "$FX/llama-tiny/tokenizer.json" \
    --catalog "$FX/catalog.csv" --soft-prompt "default=$FX/prompt-llama" --template "$TEMPLATE" \
    --adapter "$OUT/llama.lora.gguf" --out "$OUT/llama.lora.pack.gguf"

step "compile the Kotlin test (generated bindings + coroutine API + test + the README's Kotlin block)"
# The README's Kotlin example, compiled and run as a test: it must match the real API.
{
    echo "// Generated by run-tests.sh from README.md's kotlin block."
    echo "import dev.delrec.*"
    echo "suspend fun readmeSnippet(modelPath: String, packPath: String) {"
    awk '/^```kotlin$/{on=1; next} /^```$/{if (on) exit} on' README.md
    echo "}"
} > "$OUT/ReadmeSnippet.kt"
grep -q "openEngine" "$OUT/ReadmeSnippet.kt" || { echo "README.md has no Kotlin example"; exit 1; }
"$KOTLINC" -nowarn -include-runtime -cp "$CP" -d "$OUT/delrec-test.jar" "$KT" bindings/kotlin/src/dev/delrec/*.kt \
    "$OUT/ReadmeSnippet.kt" bindings/kotlin/tests/DelrecTest.kt

step "run the Kotlin test on the JVM"
DELREC_MODEL=$OUT/llama.gguf DELREC_PACK=$OUT/llama.pack.gguf DELREC_OTHER_PACK=$OUT/qwen2.pack.gguf \
    DELREC_SEQ_PACK=$OUT/llama.seq.pack.gguf DELREC_ADAPTER_PACK=$OUT/llama.lora.pack.gguf \
    DELREC_CLI=$REL/delrec DELREC_CATALOG=$FX/catalog.csv \
    java -Djna.library.path="$REL" -cp "$OUT/delrec-test.jar:$CP" DelrecTestKt

step "compile and run the Java test"
rm -rf "$OUT/java" && mkdir -p "$OUT/java"
javac -nowarn -cp "$OUT/delrec-test.jar:$CP" -d "$OUT/java" bindings/kotlin/tests/JavaTest.java
DELREC_MODEL=$OUT/llama.gguf DELREC_PACK=$OUT/llama.pack.gguf DELREC_CLI=$REL/delrec \
    java -Djna.library.path="$REL" -cp "$OUT/java:$OUT/delrec-test.jar:$CP" JavaTest
