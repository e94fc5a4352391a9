package org.mobilevos.core

/**
 * A small JSON reader (RFC 8259) for the export's manifest.json and the golden vectors' index: the core depends
 * on the Kotlin standard library alone, so it compiles and tests with nothing but kotlinc. Objects come back as
 * Map<String, Any?>, arrays as List<Any?>, numbers as Double (or Long when integral), plus String, Boolean, null.
 */
object Json {
    fun parse(text: String): Any? {
        val reader = Reader(text)
        val value = reader.value()
        reader.skipSpace()
        if (!reader.done()) reader.fail("unexpected text after the JSON value")
        return value
    }

    private class Reader(val s: String) {
        var i = 0

        fun done() = i >= s.length

        fun fail(message: String): Nothing = throw IllegalArgumentException("JSON, character $i: $message")

        fun skipSpace() {
            while (i < s.length && s[i].isWhitespace()) i++
        }

        fun value(): Any? {
            skipSpace()
            if (done()) fail("unexpected end")
            return when (s[i]) {
                '{' -> obj()
                '[' -> arr()
                '"' -> str()
                't' -> word("true", true)
                'f' -> word("false", false)
                'n' -> word("null", null)
                else -> num()
            }
        }

        fun word(w: String, v: Any?): Any? {
            if (!s.startsWith(w, i)) fail("expected $w")
            i += w.length
            return v
        }

        fun obj(): Map<String, Any?> {
            val out = LinkedHashMap<String, Any?>()
            i++
            skipSpace()
            if (s.getOrNull(i) == '}') { i++; return out }
            while (true) {
                skipSpace()
                if (s.getOrNull(i) != '"') fail("expected a key")
                val key = str()
                skipSpace()
                if (s.getOrNull(i) != ':') fail("expected ':'")
                i++
                out[key] = value()
                skipSpace()
                when (s.getOrNull(i)) {
                    ',' -> i++
                    '}' -> { i++; return out }
                    else -> fail("expected ',' or '}'")
                }
            }
        }

        fun arr(): List<Any?> {
            val out = ArrayList<Any?>()
            i++
            skipSpace()
            if (s.getOrNull(i) == ']') { i++; return out }
            while (true) {
                out.add(value())
                skipSpace()
                when (s.getOrNull(i)) {
                    ',' -> i++
                    ']' -> { i++; return out }
                    else -> fail("expected ',' or ']'")
                }
            }
        }

        fun str(): String {
            val out = StringBuilder()
            i++
            while (true) {
                if (done()) fail("unterminated string")
                val c = s[i++]
                when (c) {
                    '"' -> return out.toString()
                    '\\' -> {
                        if (done()) fail("unterminated escape")
                        when (val e = s[i++]) {
                            '"', '\\', '/' -> out.append(e)
                            'b' -> out.append('\b')
                            'f' -> out.append('\u000C')
                            'n' -> out.append('\n')
                            'r' -> out.append('\r')
                            't' -> out.append('\t')
                            'u' -> {
                                if (i + 4 > s.length) fail("bad \\u escape")
                                out.append(s.substring(i, i + 4).toInt(16).toChar())
                                i += 4
                            }
                            else -> fail("bad escape \\$e")
                        }
                    }
                    else -> out.append(c)
                }
            }
        }

        fun num(): Any {
            val start = i
            while (i < s.length && (s[i].isDigit() || s[i] in "+-.eE")) i++
            val text = s.substring(start, i)
            if (text.isEmpty()) fail("unexpected character '${s[start]}'")
            return text.toLongOrNull() ?: text.toDoubleOrNull() ?: fail("bad number $text")
        }
    }
}
