// Pure Kotlin (JVM): everything of the app that is not camera or UI, tested on any JVM. Without Gradle the
// same sources compile and test with scripts/test_core.sh (what CI runs).
plugins {
    id("org.jetbrains.kotlin.jvm")
}

kotlin {
    jvmToolchain(17)
}

dependencies {
    testImplementation(kotlin("test-junit5"))
    testRuntimeOnly("org.junit.platform:junit-platform-launcher")
}

tasks.test {
    useJUnitPlatform()
    systemProperty("mvos.repo", rootDir.parentFile.absolutePath) // tests/data/app_benchmark.csv
}
