// The demo app (app/) and the plain-Kotlin core it shares with the JVM tests (core/).
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}

dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google() // CameraX, LiteRT
        mavenCentral() // OpenCV (org.opencv:opencv), JUnit
    }
}

rootProject.name = "mobilevos-demo"
include(":core", ":app")
