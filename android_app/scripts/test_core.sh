#!/usr/bin/env bash
# Compiles the app's plain-Kotlin core (android_app/core) and runs its JUnit 5 tests on the JVM, with no
# Android SDK and no Gradle: the Kotlin compiler comes from the npm package `kotlin-compiler`, JUnit from
# Debian's `junit5` package. Exit status is non-zero when compiling or any test fails.
#
#   android_app/scripts/test_core.sh            # compile + test
#   KOTLIN_HOME=/opt/kotlinc android_app/scripts/test_core.sh   # use an existing Kotlin distribution
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"        # android_app/
repo="$(cd "$here/.." && pwd)"
kotlin_version="2.4.20"
cache="${MVOS_KOTLIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mvos-kotlin}"
junit="${JUNIT_CONSOLE_JAR:-/usr/share/java/junit-platform-console-standalone.jar}"

if [[ -z "${KOTLIN_HOME:-}" ]]; then
    KOTLIN_HOME="$cache/kotlin-compiler-$kotlin_version"
    if [[ ! -x "$KOTLIN_HOME/bin/kotlinc-jvm" ]]; then
        mkdir -p "$cache"
        tmp="$(mktemp -d "$cache/.fetch.XXXXXX")"
        (cd "$tmp" && npm pack --silent "kotlin-compiler@$kotlin_version" >/dev/null && tar -xzf ./*.tgz)
        chmod +x "$tmp/package/bin/"*
        mv "$tmp/package" "$KOTLIN_HOME"          # complete distribution appears in one step
        rm -rf "$tmp"
    fi
fi
if [[ ! -f "$junit" ]]; then
    echo "error: $junit not found (apt-get install junit5, or set JUNIT_CONSOLE_JAR)" >&2
    exit 2
fi

lib="$KOTLIN_HOME/lib"
build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT
test_cp="$lib/kotlin-stdlib.jar:$lib/kotlin-test.jar:$lib/kotlin-test-junit5.jar:$junit"

echo "kotlin core: compiling"
"$KOTLIN_HOME/bin/kotlinc-jvm" -nowarn -jvm-target 17 -d "$build/main" \
    $(find "$here/core/src/main/kotlin" -name '*.kt')
"$KOTLIN_HOME/bin/kotlinc-jvm" -nowarn -jvm-target 17 -cp "$build/main:$test_cp" -d "$build/test" \
    $(find "$here/core/src/test/kotlin" -name '*.kt')

echo "kotlin core: testing"
java -Dmvos.repo="$repo" \
    -jar "$junit" --disable-banner --details=summary --fail-if-no-tests \
    --class-path "$build/main:$build/test:$here/core/src/test/resources:$test_cp" \
    --scan-class-path "$build/test"
