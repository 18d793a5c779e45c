/* The OTLP/protobuf encoding of span records, in C: steplog.otlp's `_record_span`, for the
 * records the span export process reads off its pipe (steplog.span_export.SpanRecord,
 * decoded by msgpack as plain lists). Optional: steplog.otlp encodes in Python when this
 * module is not built (no C compiler), and whenever it raises (a value it does not
 * handle): both write the same bytes, which tests/unit/test_otlp_speedups.py checks.
 *
 * Why C: the Python encoding was three quarters of what the export process spent, and
 * that process was half of the instructions tracing added to a workflow
 * (docs/observability.md, "Session 19").
 *
 * The wire format (https://protobuf.dev/programming-guides/encoding/): a field is a
 * varint key (field number << 3 | wire type) then its value; wire type 0 a varint,
 * 1 eight little-endian bytes, 2 a varint length and the bytes, 5 four bytes. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Every value is checked for its exact built-in type before it is read, so no Python
 * code runs while a batch is encoded (the items of the lists read stay as they are).
 *
 * Nesting of attribute values (lists and maps in lists and maps) beyond this is left to
 * the Python encoder. */
#define MAX_DEPTH 16

typedef struct {
    char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
} Buf;

static int reserve(Buf *b, Py_ssize_t extra) {
    if (b->len + extra <= b->cap) return 0;
    Py_ssize_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) cap *= 2;
    char *data = PyMem_Realloc(b->data, (size_t)cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

static int put(Buf *b, const void *bytes, Py_ssize_t n) {
    if (reserve(b, n) < 0) return -1;
    memcpy(b->data + b->len, bytes, (size_t)n);
    b->len += n;
    return 0;
}

static int varint_size(uint64_t v) {
    int n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static void write_varint(char *out, uint64_t v) {
    while (v >= 0x80) {
        *out++ = (char)((v & 0x7F) | 0x80);
        v >>= 7;
    }
    *out = (char)v;
}

static int put_varint(Buf *b, uint64_t v) {
    if (reserve(b, 10) < 0) return -1;
    write_varint(b->data + b->len, v);
    b->len += varint_size(v);
    return 0;
}

static int put_byte(Buf *b, unsigned char c) { return put(b, &c, 1); }

static int put_fixed64(Buf *b, uint64_t v) { /* little-endian */
    unsigned char out[8];
    for (int i = 0; i < 8; i++) out[i] = (unsigned char)(v >> (8 * i));
    return put(b, out, 8);
}

static int put_fixed32(Buf *b, uint32_t v) {
    unsigned char out[4];
    for (int i = 0; i < 4; i++) out[i] = (unsigned char)(v >> (8 * i));
    return put(b, out, 4);
}

static int put_big64(Buf *b, uint64_t v) { /* an id's bytes, big-endian */
    unsigned char out[8];
    for (int i = 0; i < 8; i++) out[i] = (unsigned char)(v >> (56 - 8 * i));
    return put(b, out, 8);
}

/* A length-delimited field: `open_len` writes the key and returns where its value
 * starts; `close_len` puts the value's length before it. */
static Py_ssize_t open_len(Buf *b, unsigned field) {
    if (put_varint(b, (uint64_t)field << 3 | 2) < 0) return -1;
    return b->len;
}

static int close_len(Buf *b, Py_ssize_t start) {
    uint64_t size = (uint64_t)(b->len - start);
    int n = varint_size(size);
    if (reserve(b, n) < 0) return -1;
    memmove(b->data + start + n, b->data + start, (size_t)size);
    write_varint(b->data + start, size);
    b->len += n;
    return 0;
}

static int put_len(Buf *b, unsigned field, const char *bytes, Py_ssize_t n) {
    if (put_varint(b, (uint64_t)field << 3 | 2) < 0 || put_varint(b, (uint64_t)n) < 0) return -1;
    return put(b, bytes, n);
}

/* A str field, left out when empty (steplog.otlp's `_string`). */
static int put_string(Buf *b, unsigned field, PyObject *text) {
    Py_ssize_t n;
    const char *utf8 = PyUnicode_AsUTF8AndSize(text, &n);
    if (utf8 == NULL) return -1;
    return n ? put_len(b, field, utf8, n) : 0;
}

static int unsupported(const char *what) {
    PyErr_Format(PyExc_TypeError, "not encoded here: %s", what);
    return -1;
}

/* An exact int in [0, 2**64) (Python's struct "Q"), else an error. */
static int as_u64(PyObject *value, uint64_t *out) {
    if (!PyLong_CheckExact(value)) return unsupported("an id or time that is not an int");
    unsigned long long v = PyLong_AsUnsignedLongLong(value);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    *out = (uint64_t)v;
    return 0;
}

static int hex_digit(Py_UCS4 c) {
    if (c >= '0' && c <= '9') return (int)(c - '0');
    if (c >= 'a' && c <= 'f') return (int)(c - 'a' + 10);
    if (c >= 'A' && c <= 'F') return (int)(c - 'A' + 10);
    return -1;
}

/* Exactly `digits` hex digits (a trace id's 32, a span id's 16) as big-endian bytes;
 * anything else (which Python's int(x, 16) may read differently) is left to Python. */
static int put_hex(Buf *b, PyObject *text, Py_ssize_t digits) {
    if (!PyUnicode_CheckExact(text) || PyUnicode_GET_LENGTH(text) != digits)
        return unsupported("an id that is not its hex digits");
    unsigned char out[16];
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    for (Py_ssize_t i = 0; i < digits; i += 2) {
        int high = hex_digit(PyUnicode_READ(kind, data, i));
        int low = hex_digit(PyUnicode_READ(kind, data, i + 1));
        if (high < 0 || low < 0) return unsupported("an id that is not its hex digits");
        out[i / 2] = (unsigned char)(high << 4 | low);
    }
    return put(b, out, digits / 2);
}

static int put_key_values(Buf *b, unsigned field, PyObject *mapping, int depth);

/* An AnyValue message's fields (steplog.otlp's `_any_value`). */
static int put_any_value(Buf *b, PyObject *value, int depth) {
    if (depth > MAX_DEPTH) return unsupported("values nested this deep");
    if (PyBool_Check(value)) {
        const char *encoded = value == Py_True ? "\x10\x01" : "\x10\x00";
        return put(b, encoded, 2);
    }
    if (PyUnicode_CheckExact(value)) {
        Py_ssize_t n;
        const char *utf8 = PyUnicode_AsUTF8AndSize(value, &n);
        if (utf8 == NULL) return -1;
        return put_len(b, 1, utf8, n);
    }
    if (PyLong_CheckExact(value)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (overflow) return unsupported("an int beyond 64 bits");
        if (v == -1 && PyErr_Occurred()) return -1;
        if (put_byte(b, 0x18) < 0) return -1;
        return put_varint(b, (uint64_t)v); /* (a negative one as ten bytes) */
    }
    if (PyFloat_CheckExact(value)) {
        double v = PyFloat_AS_DOUBLE(value);
        uint64_t bits;
        memcpy(&bits, &v, 8);
        if (put_byte(b, 0x21) < 0) return -1;
        return put_fixed64(b, bits);
    }
    if (PyBytes_CheckExact(value))
        return put_len(b, 7, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value));
    if (PyList_CheckExact(value) || PyTuple_CheckExact(value)) {
        Py_ssize_t array = open_len(b, 5);
        if (array < 0) return -1;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(value);
        PyObject **items = PySequence_Fast_ITEMS(value);
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_ssize_t item = open_len(b, 1);
            if (item < 0 || put_any_value(b, items[i], depth + 1) < 0 || close_len(b, item) < 0)
                return -1;
        }
        return close_len(b, array);
    }
    if (PyDict_CheckExact(value)) {
        Py_ssize_t list = open_len(b, 6);
        if (list < 0 || put_key_values(b, 1, value, depth + 1) < 0) return -1;
        return close_len(b, list);
    }
    if (value == Py_None) return 0;
    return unsupported("an attribute value of another type");
}

/* Each item of a dict as a KeyValue in `field` (steplog.otlp's `_attributes`). */
static int put_key_values(Buf *b, unsigned field, PyObject *mapping, int depth) {
    if (!PyDict_CheckExact(mapping)) return unsupported("attributes that are not a dict");
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(mapping, &pos, &key, &value)) {
        if (!PyUnicode_CheckExact(key)) return unsupported("an attribute key that is not a str");
        Py_ssize_t pair = open_len(b, field);
        if (pair < 0 || put_string(b, 1, key) < 0) return -1;
        Py_ssize_t any = open_len(b, 2);
        if (any < 0 || put_any_value(b, value, depth) < 0 || close_len(b, any) < 0) return -1;
        if (close_len(b, pair) < 0) return -1;
    }
    return 0;
}

/* The items of a list or tuple of exactly `n` items, else an error. */
static PyObject **fields_of(PyObject *record, Py_ssize_t n, const char *what) {
    if (!(PyList_CheckExact(record) || PyTuple_CheckExact(record)) ||
        PySequence_Fast_GET_SIZE(record) != n) {
        unsupported(what);
        return NULL;
    }
    return PySequence_Fast_ITEMS(record);
}

static int truthy_int(PyObject *value, uint64_t *out) {
    /* A time or a count: None and 0 are left out, as Python's `if value:`. */
    if (value == Py_None) {
        *out = 0;
        return 0;
    }
    return as_u64(value, out);
}

static int put_link(Buf *b, PyObject *link) {
    /* (context as (trace id high, low, span id, flags, trace state), is remote, attributes) */
    PyObject **fields = fields_of(link, 3, "a link");
    if (fields == NULL) return -1;
    PyObject **context = fields_of(fields[0], 5, "a link's context");
    if (context == NULL) return -1;
    if (!PyLong_CheckExact(context[3])) return unsupported("a link's flags");
    if (!PyUnicode_CheckExact(context[4]) || PyUnicode_GET_LENGTH(context[4]) != 0)
        return unsupported("a link with a trace state"); /* (Python parses and rewrites it) */
    uint64_t high, low, span_id;
    if (as_u64(context[0], &high) < 0 || as_u64(context[1], &low) < 0 ||
        as_u64(context[2], &span_id) < 0)
        return -1;
    if (!PyBool_Check(fields[1])) return unsupported("a link's is remote that is not a bool");
    int remote = fields[1] == Py_True;
    if (fields[2] != Py_None && !PyDict_CheckExact(fields[2]))
        return unsupported("a link's attributes");
    Py_ssize_t start = open_len(b, 13);
    if (start < 0 || put(b, "\x0a\x10", 2) < 0 || put_big64(b, high) < 0 ||
        put_big64(b, low) < 0 || put(b, "\x12\x08", 2) < 0 || put_big64(b, span_id) < 0)
        return -1;
    if (fields[2] != Py_None && put_key_values(b, 4, fields[2], 0) < 0) return -1;
    if (put_byte(b, 0x35) < 0 || put_fixed32(b, 0x100 | (remote ? 0x200 : 0)) < 0) return -1;
    return close_len(b, start);
}

static int put_count(Buf *b, unsigned char key, PyObject *value) {
    uint64_t n;
    if (as_u64(value, &n) < 0) return -1;
    return n ? (put_byte(b, key) < 0 ? -1 : put_varint(b, n)) : 0;
}

/* One record as field 2 of its ScopeSpans (steplog.otlp's `_record_span`, same bytes). */
static int put_span(Buf *b, PyObject *record) {
    PyObject **f = fields_of(record, 17, "a span record");
    if (f == NULL) return -1;
    /* 0 group, 1 name, 2 kind, 3 trace id (hex), 4 span id, 5 flags, 6 trace state,
     * 7 parent (span id or its hex, is remote) or None, 8 start, 9 end, 10 attributes,
     * 11 events (name, time, attributes), 12 links, 13 status (code, description),
     * 14-16 dropped attributes, events, links. */
    Py_ssize_t start = open_len(b, 2);
    if (start < 0) return -1;
    if (put(b, "\x0a\x10", 2) < 0 || put_hex(b, f[3], 32) < 0) return -1;
    uint64_t span_id;
    if (as_u64(f[4], &span_id) < 0) return -1;
    if (put(b, "\x12\x08", 2) < 0 || put_big64(b, span_id) < 0) return -1;
    if (!PyUnicode_CheckExact(f[6])) return unsupported("a trace state that is not a str");
    if (put_string(b, 3, f[6]) < 0) return -1;
    int remote = 0;
    if (f[7] != Py_None) {
        PyObject **parent = fields_of(f[7], 2, "a parent");
        if (parent == NULL) return -1;
        if (put(b, "\x22\x08", 2) < 0) return -1;
        if (PyUnicode_CheckExact(parent[0])) {
            if (put_hex(b, parent[0], 16) < 0) return -1;
        } else {
            uint64_t parent_id;
            if (as_u64(parent[0], &parent_id) < 0 || put_big64(b, parent_id) < 0) return -1;
        }
        if (!PyBool_Check(parent[1])) return unsupported("is remote that is not a bool");
        remote = parent[1] == Py_True;
    }
    if (!PyUnicode_CheckExact(f[1])) return unsupported("a name that is not a str");
    if (put_string(b, 5, f[1]) < 0) return -1;
    if (!PyLong_CheckExact(f[2])) return unsupported("a kind that is not an int");
    long kind = PyLong_AsLong(f[2]);
    if (kind < 0 || kind > 4) return unsupported("a kind out of range");
    if (put_byte(b, 0x30) < 0 || put_byte(b, (unsigned char)(kind + 1)) < 0) return -1;
    uint64_t start_time, end_time;
    if (truthy_int(f[8], &start_time) < 0 || truthy_int(f[9], &end_time) < 0) return -1;
    if (start_time && (put_byte(b, 0x39) < 0 || put_fixed64(b, start_time) < 0)) return -1;
    if (end_time && (put_byte(b, 0x41) < 0 || put_fixed64(b, end_time) < 0)) return -1;
    if (put_key_values(b, 9, f[10], 0) < 0) return -1;
    if (put_count(b, 0x50, f[14]) < 0) return -1;
    if (!PyList_CheckExact(f[11]) && !PyTuple_CheckExact(f[11])) return unsupported("events");
    Py_ssize_t events = PySequence_Fast_GET_SIZE(f[11]);
    for (Py_ssize_t i = 0; i < events; i++) {
        PyObject **event = fields_of(PySequence_Fast_ITEMS(f[11])[i], 3, "an event");
        if (event == NULL) return -1;
        uint64_t time;
        if (as_u64(event[1], &time) < 0) return -1;
        if (!PyUnicode_CheckExact(event[0])) return unsupported("an event name");
        Py_ssize_t body = open_len(b, 11);
        if (body < 0 || put_byte(b, 0x09) < 0 || put_fixed64(b, time) < 0 ||
            put_string(b, 2, event[0]) < 0 || put_key_values(b, 3, event[2], 0) < 0 ||
            close_len(b, body) < 0)
            return -1;
    }
    if (put_count(b, 0x60, f[15]) < 0) return -1;
    if (!PyList_CheckExact(f[12]) && !PyTuple_CheckExact(f[12])) return unsupported("links");
    Py_ssize_t links = PySequence_Fast_GET_SIZE(f[12]);
    for (Py_ssize_t i = 0; i < links; i++)
        if (put_link(b, PySequence_Fast_ITEMS(f[12])[i]) < 0) return -1;
    if (put_count(b, 0x70, f[16]) < 0) return -1;
    PyObject **status = fields_of(f[13], 2, "a status");
    if (status == NULL) return -1;
    if (!PyLong_CheckExact(status[0])) return unsupported("a status code");
    long code = PyLong_AsLong(status[0]);
    if (code < 0 || code > 2) return unsupported("a status code out of range");
    int described = status[1] != Py_None;
    if (described && !PyUnicode_CheckExact(status[1])) return unsupported("a description");
    if (described && PyUnicode_GET_LENGTH(status[1]) == 0) described = 0;
    if (code == 0 && !described) {
        if (put(b, "\x7a\x00", 2) < 0) return -1;
    } else {
        Py_ssize_t body = open_len(b, 15);
        if (body < 0 || (described && put_string(b, 2, status[1]) < 0)) return -1;
        if (code && (put_byte(b, 0x18) < 0 || put_varint(b, (uint64_t)code) < 0)) return -1;
        if (close_len(b, body) < 0) return -1;
    }
    if (put(b, "\x85\x01", 2) < 0 || put_fixed32(b, 0x100 | (remote ? 0x200 : 0)) < 0) return -1;
    return close_len(b, start);
}

PyDoc_STRVAR(encode_spans_doc,
             "encode_spans(records, /)\n--\n\n"
             "The spans of ScopeSpans (field 2 of each, keys and lengths included) of a list "
             "of span records (steplog.span_export.SpanRecord, as msgpack decodes them), "
             "the bytes steplog.otlp's Python encoding writes. TypeError for a value it "
             "does not handle.");

static PyObject *encode_spans(PyObject *module, PyObject *records) {
    if (!PyList_Check(records)) {
        PyErr_SetString(PyExc_TypeError, "records: a list");
        return NULL;
    }
    Buf b = {NULL, 0, 0};
    Py_ssize_t n = PyList_GET_SIZE(records);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (put_span(&b, PyList_GET_ITEM(records, i)) < 0) {
            PyMem_Free(b.data);
            return NULL;
        }
    }
    PyObject *out = PyBytes_FromStringAndSize(b.data ? b.data : "", b.len);
    PyMem_Free(b.data);
    return out;
}

static PyMethodDef methods[] = {
    {"encode_spans", encode_spans, METH_O, encode_spans_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "steplog._otlp_speedups",
    .m_doc = "steplog.otlp's encoding of span records, in C (see the source's comment).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__otlp_speedups(void) { return PyModule_Create(&module); }
