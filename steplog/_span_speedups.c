/* The life of a steplog span, in C: steplog.tracing's LeanSpan (its `end`, `record`,
 * `add_own_event`, `set_own_attributes`, `traceparent` and `is_recording`),
 * `_CurrentSpan` (a span made current for a `with` block), `LeanTracer._unparsed_child`
 * (a child span started from a message's traceparent, as it is: `child`),
 * `LeanTracer.start_span`'s two common spans (`local_child`: a child of a span of this
 * process, the API's first decision under its request's span; `root`: a new trace, a
 * request's span when no traceparent came), and `QueueEmit`, the SDK batch processor's
 * `emit` of the record a span ends as.
 * Optional: where this module is not built (no C compiler) the Python of those names
 * runs, and tests/unit/test_otlp.py runs its tests of spans with both, against the
 * SDK's spans.
 *
 * Why C: a decision's span and a task attempt's cost about 60,000 instructions each in
 * Python, two of them per transition of a Task chain, and that was most of what tracing
 * added to the process that decides (docs/observability.md, "Session 22").
 *
 * `SpanCore` holds a span's fields (the LeanSpan attributes of the same names, which
 * its Python methods read and write); steplog.tracing's `_FastLeanSpan` is
 * `class _FastLeanSpan(SpanCore, LeanSpan)`, so these methods come before LeanSpan's.
 * Whatever this module does not do itself it hands to the Python it stands for (a
 * span at its limits: `add_event`, `set_attributes`; a processor that takes the SDK's
 * ReadableSpan: `_hand_readable`; an exception in a `with` block: `configure`'s `fail`),
 * so there is one copy of every rule that is not on the path every span takes. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <time.h>
#include <string.h>
#include <pthread.h>

/* What steplog.tracing gives `configure` at import. */
static PyObject *current_var;    /* the ContextVar of OpenTelemetry's current context */
static PyObject *span_key;       /* the key of the current span in a Context */
static PyObject *context_type;   /* opentelemetry.context.Context */
static PyObject *unset_status;   /* the Status a span starts with (UNSET) */
static PyObject *unset_record;   /* how a record holds it: (code, description) */
static PyObject *no_trace_state; /* the empty TraceState */
static PyObject *getrandbits;    /* random.getrandbits (RandomIdGenerator's) */
static PyObject *fail_hook;      /* (span, exception): record it, status ERROR */
static PyObject *detach_failed;  /* (exception): log a context that could not be reset */
static PyObject *link_records;   /* (links): their records (span_export.link_record) */
static long sampled_flag;        /* TraceFlags.SAMPLED */
static long random_flag;         /* W3C level 2's random trace id flag (0: none) */

static PyObject *empty_tuple, *empty_str, *zero, *sixty_four, *one_twenty_eight, *hex_16,
    *hex_2;

/* Whether `configure` was called (0: an error set). */
static int ready(void) {
    if (link_records != NULL) return 1;
    PyErr_SetString(PyExc_RuntimeError, "steplog._span_speedups is not configured");
    return 0;
}

/* Attribute names, interned once. */
static PyObject *s_takes_records, *s_emits, *s_ends, *s_hand_readable, *s_group, *s_value_,
    *s_dict, *s_to_header, *s_max_events, *s_max_attributes, *s_add_event, *s_set_attributes,
    *s_status_code, *s_description, *s_end, *s_is_recording, *s_samples_children, *s_starts,
    *s_get_span_context, *s_samples_roots, *s_random_ids, *hex_32, *s_processors, *s_processor,
    *s_span_processors, *s_random_span_ids, *s_span_id;

static PyObject *now_ns(void) {
    /* What time.time_ns() reads (the system clock). */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return PyLong_FromLongLong((long long)ts.tv_sec * 1000000000LL + (long long)ts.tv_nsec);
}

/* ------------------------------------------------------------------------------------ */
/* SpanCore */

typedef struct {
    PyObject_HEAD
    PyObject *tracer;
    PyObject *name;
    PyObject *kind;
    PyObject *trace; /* the trace id, 32 lower-case hex digits */
    PyObject *span_id;
    PyObject *flags;
    PyObject *trace_state;
    PyObject *parent; /* None, the parent's SpanContext, or a remote parent's traceparent */
    PyObject *attributes;
    PyObject *links;
    PyObject *start_time;
    PyObject *context;
    PyObject *end_time;
    PyObject *events;
    PyObject *status;
    PyObject *dropped_attributes;
    PyObject *dropped_events;
} SpanCore;

#define SPAN_FIELDS(X)                                                                      \
    X(tracer) X(name) X(kind) X(trace) X(span_id) X(flags) X(trace_state) X(parent)         \
    X(attributes) X(links) X(start_time) X(context) X(end_time) X(events) X(status)         \
    X(dropped_attributes) X(dropped_events)

static int span_traverse(SpanCore *self, visitproc visit, void *arg) {
#define VISIT(f) Py_VISIT(self->f);
    SPAN_FIELDS(VISIT)
#undef VISIT
    return 0;
}

static int span_clear(SpanCore *self) {
#define CLEAR(f) Py_CLEAR(self->f);
    SPAN_FIELDS(CLEAR)
#undef CLEAR
    return 0;
}

static void span_dealloc(SpanCore *self) {
    PyObject_GC_UnTrack(self);
    span_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* A field a method needs, as Python would find it: an AttributeError when it was never
 * set. */
static PyObject *field(PyObject *value, const char *name) {
    if (value == NULL) PyErr_Format(PyExc_AttributeError, "_%s", name);
    return value;
}
#define FIELD(self, f) field((self)->f, #f)

static int is_none(PyObject *value) { return value == NULL || value == Py_None; }

/* An int attribute (a tracer's limits, a batch processor's sizes), as a Py_ssize_t (-1
 * and an error set when it is not one). */
static Py_ssize_t size_attribute(PyObject *owner, PyObject *name) {
    PyObject *value = PyObject_GetAttr(owner, name);
    if (value == NULL) return -1;
    Py_ssize_t size = PyLong_AsSsize_t(value);
    Py_DECREF(value);
    return size;
}

/* The span as steplog.span_export sends it (its SpanRecord): LeanSpan.record. */
static PyObject *span_record(SpanCore *self, PyObject *unused) {
    if (!ready()) return NULL;
    PyObject *group = NULL, *kind = NULL, *header = NULL, *parent = NULL, *links = NULL,
             *status = NULL, *dict = NULL;
    PyObject *record = NULL;
    if (!FIELD(self, tracer) || !FIELD(self, kind) || !FIELD(self, trace_state) ||
        !FIELD(self, parent) || !FIELD(self, links) || !FIELD(self, status) ||
        !FIELD(self, name) || !FIELD(self, trace) || !FIELD(self, span_id) ||
        !FIELD(self, flags) || !FIELD(self, start_time) || !FIELD(self, end_time) ||
        !FIELD(self, attributes) || !FIELD(self, events) || !FIELD(self, dropped_attributes) ||
        !FIELD(self, dropped_events))
        return NULL;
    group = PyObject_GetAttr(self->tracer, s_group);
    if (group == NULL) goto done;
    kind = PyObject_GetAttr(self->kind, s_value_);
    if (kind == NULL) goto done;
    /* The trace state's header, "" for an empty one (its dict tested, as in Python). */
    dict = PyObject_GetAttr(self->trace_state, s_dict);
    int has_state;
    if (dict == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) goto done;
        PyErr_Clear();
        has_state = PyObject_IsTrue(self->trace_state);
    } else {
        has_state = PyObject_IsTrue(dict);
    }
    if (has_state < 0) goto done;
    if (has_state) {
        header = PyObject_CallMethodNoArgs(self->trace_state, s_to_header);
        if (header == NULL) goto done;
    } else {
        header = Py_NewRef(empty_str);
    }
    /* The parent: None, a remote parent's (span id as hex, True), or a SpanContext's
     * (span id, is remote). */
    PyObject *p = self->parent;
    if (p == Py_None) {
        parent = Py_NewRef(Py_None);
    } else if (PyUnicode_CheckExact(p)) {
        PyObject *id = PyUnicode_Substring(p, 36, 52);
        if (id == NULL) goto done;
        parent = PyTuple_Pack(2, id, Py_True);
        Py_DECREF(id);
        if (parent == NULL) goto done;
    } else {
        PyObject *id = PySequence_GetItem(p, 1);
        if (id == NULL) goto done;
        PyObject *remote = PySequence_GetItem(p, 2);
        if (remote == NULL) {
            Py_DECREF(id);
            goto done;
        }
        parent = PyTuple_Pack(2, id, remote);
        Py_DECREF(id);
        Py_DECREF(remote);
        if (parent == NULL) goto done;
    }
    int has_links = PyObject_IsTrue(self->links);
    if (has_links < 0) goto done;
    links = has_links ? PyObject_CallOneArg(link_records, self->links) : Py_NewRef(empty_tuple);
    if (links == NULL) goto done;
    if (self->status == unset_status) {
        status = Py_NewRef(unset_record);
    } else {
        PyObject *code = PyObject_GetAttr(self->status, s_status_code);
        if (code == NULL) goto done;
        PyObject *value = PyObject_GetAttr(code, s_value_);
        Py_DECREF(code);
        if (value == NULL) goto done;
        PyObject *description = PyObject_GetAttr(self->status, s_description);
        if (description == NULL) {
            Py_DECREF(value);
            goto done;
        }
        status = PyTuple_Pack(2, value, description);
        Py_DECREF(value);
        Py_DECREF(description);
        if (status == NULL) goto done;
    }
    record = PyTuple_New(17);
    if (record == NULL) goto done;
    /* (PyTuple_SET_ITEM steals: the references made here are handed over, the fields'
     * are added) */
    PyTuple_SET_ITEM(record, 0, group);
    PyTuple_SET_ITEM(record, 1, Py_NewRef(self->name));
    PyTuple_SET_ITEM(record, 2, kind);
    PyTuple_SET_ITEM(record, 3, Py_NewRef(self->trace));
    PyTuple_SET_ITEM(record, 4, Py_NewRef(self->span_id));
    PyTuple_SET_ITEM(record, 5, Py_NewRef(self->flags));
    PyTuple_SET_ITEM(record, 6, header);
    PyTuple_SET_ITEM(record, 7, parent);
    PyTuple_SET_ITEM(record, 8, Py_NewRef(self->start_time));
    PyTuple_SET_ITEM(record, 9, Py_NewRef(self->end_time));
    PyTuple_SET_ITEM(record, 10, Py_NewRef(self->attributes));
    PyTuple_SET_ITEM(record, 11, Py_NewRef(self->events));
    PyTuple_SET_ITEM(record, 12, links);
    PyTuple_SET_ITEM(record, 13, status);
    PyTuple_SET_ITEM(record, 14, Py_NewRef(self->dropped_attributes));
    PyTuple_SET_ITEM(record, 15, Py_NewRef(self->dropped_events));
    PyTuple_SET_ITEM(record, 16, Py_NewRef(zero));
    Py_XDECREF(dict);
    return record;
done:
    Py_XDECREF(group);
    Py_XDECREF(kind);
    Py_XDECREF(header);
    Py_XDECREF(parent);
    Py_XDECREF(links);
    Py_XDECREF(status);
    Py_XDECREF(dict);
    return NULL;
}

/* Whether a tuple attribute of the tracer holds anything (-1: an error). */
static Py_ssize_t tracer_count(PyObject *tracer, PyObject *name) {
    PyObject *value = PyObject_GetAttr(tracer, name);
    if (value == NULL) return -1;
    Py_ssize_t n = PyObject_Length(value);
    Py_DECREF(value);
    return n;
}

/* LeanSpan.end: the end time set (once), a sampled span's record handed to the
 * processors that take records, then `_hand_readable` for any that take the SDK's
 * ReadableSpan. */
static PyObject *span_end_at(SpanCore *self, PyObject *end_time) {
    if (!is_none(self->end_time)) Py_RETURN_NONE;
    if (!ready() || !FIELD(self, tracer) || !FIELD(self, flags)) return NULL;
    PyObject *at;
    int given = end_time == NULL ? 0 : PyObject_IsTrue(end_time); /* (`end_time or now`) */
    if (given < 0) return NULL;
    at = given ? Py_NewRef(end_time) : now_ns();
    if (at == NULL) return NULL;
    Py_XSETREF(self->end_time, at);
    long flags = PyLong_AsLong(self->flags);
    if (flags == -1 && PyErr_Occurred()) return NULL;
    int sampled = (flags & sampled_flag) != 0;
    if (sampled) {
        PyObject *takes = PyObject_GetAttr(self->tracer, s_takes_records);
        if (takes == NULL) return NULL;
        PyObject *fast = PySequence_Fast(takes, "takes_records");
        Py_DECREF(takes);
        if (fast == NULL) return NULL;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
        if (n > 0) {
            PyObject *record = span_record(self, NULL);
            if (record == NULL) {
                Py_DECREF(fast);
                return NULL;
            }
            for (Py_ssize_t i = 0; i < n; i++) {
                PyObject *r = PyObject_CallOneArg(PySequence_Fast_GET_ITEM(fast, i), record);
                if (r == NULL) {
                    Py_DECREF(record);
                    Py_DECREF(fast);
                    return NULL;
                }
                Py_DECREF(r);
            }
            Py_DECREF(record);
        }
        Py_DECREF(fast);
    }
    Py_ssize_t emits = sampled ? tracer_count(self->tracer, s_emits) : 0;
    if (emits < 0) return NULL;
    Py_ssize_t ends = tracer_count(self->tracer, s_ends);
    if (ends < 0) return NULL;
    if (emits || ends)
        return PyObject_CallMethodOneArg((PyObject *)self, s_hand_readable,
                                         sampled ? Py_True : Py_False);
    Py_RETURN_NONE;
}

static PyObject *span_end(SpanCore *self, PyObject *const *args, Py_ssize_t nargs,
                          PyObject *kwnames) {
    PyObject *end_time = NULL;
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs + nkw > 1) {
        PyErr_SetString(PyExc_TypeError, "end() takes at most 1 argument");
        return NULL;
    }
    if (nargs == 1) {
        end_time = args[0];
    } else if (nkw == 1) {
        if (PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "end_time") != 0) {
            PyErr_SetString(PyExc_TypeError, "end() got an unexpected keyword argument");
            return NULL;
        }
        end_time = args[0];
    }
    return span_end_at(self, end_time);
}

/* LeanSpan.add_own_event: (name, time, attributes) appended as it is; at the span's
 * limit, or for attributes that are not a dict, `add_event` (the same event). */
static PyObject *span_add_own_event(SpanCore *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 2 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "add_own_event() takes 2 or 3 arguments");
        return NULL;
    }
    if (!is_none(self->end_time)) Py_RETURN_NONE;
    if (!FIELD(self, events) || !FIELD(self, tracer)) return NULL;
    PyObject *name = args[0], *attributes = args[1];
    PyObject *timestamp = nargs == 3 ? args[2] : Py_None;
    Py_ssize_t limit = size_attribute(self->tracer, s_max_events);
    if (limit == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t held = PyObject_Length(self->events);
    if (held < 0) return NULL;
    if (held >= limit || !PyDict_CheckExact(attributes))
        return PyObject_CallMethodObjArgs((PyObject *)self, s_add_event, name, attributes,
                                          timestamp, NULL);
    if (!PyList_CheckExact(self->events)) { /* (the empty tuple it starts with) */
        PyObject *events = PyList_New(0);
        if (events == NULL) return NULL;
        Py_SETREF(self->events, events);
    }
    int given = timestamp == Py_None ? 0 : PyObject_IsTrue(timestamp);
    if (given < 0) return NULL;
    PyObject *at = given ? Py_NewRef(timestamp) : now_ns();
    if (at == NULL) return NULL;
    PyObject *event = PyTuple_Pack(3, name, at, attributes);
    Py_DECREF(at);
    if (event == NULL) return NULL;
    int failed = PyList_Append(self->events, event);
    Py_DECREF(event);
    if (failed) return NULL;
    Py_RETURN_NONE;
}

/* LeanSpan.set_own_attributes: added as they are while the span holds none of their keys
 * and stays within its limit; otherwise `set_attributes`. */
static PyObject *span_set_own_attributes(SpanCore *self, PyObject *attributes) {
    if (!FIELD(self, attributes) || !FIELD(self, tracer)) return NULL;
    if (is_none(self->end_time) && PyDict_CheckExact(attributes) &&
        PyDict_CheckExact(self->attributes)) {
        Py_ssize_t limit = size_attribute(self->tracer, s_max_attributes);
        if (limit == -1 && PyErr_Occurred()) return NULL;
        if (PyDict_GET_SIZE(self->attributes) + PyDict_GET_SIZE(attributes) <= limit) {
            Py_ssize_t pos = 0;
            PyObject *key, *value;
            int disjoint = 1;
            while (PyDict_Next(attributes, &pos, &key, &value)) {
                int held = PyDict_Contains(self->attributes, key);
                if (held < 0) return NULL;
                if (held) {
                    disjoint = 0;
                    break;
                }
            }
            if (disjoint) {
                if (PyDict_Update(self->attributes, attributes) < 0) return NULL;
                Py_RETURN_NONE;
            }
        }
    }
    return PyObject_CallMethodOneArg((PyObject *)self, s_set_attributes, attributes);
}

/* LeanSpan.traceparent: "00-<trace id>-<span id>-<flags>" from the span's fields, ""
 * when its context was built and is not valid. */
static PyObject *span_traceparent(SpanCore *self, void *unused) {
    if (!FIELD(self, trace) || !FIELD(self, span_id) || !FIELD(self, flags)) return NULL;
    if (!is_none(self->context)) {
        PyObject *is_valid = PySequence_GetItem(self->context, 5);
        if (is_valid == NULL) return NULL;
        int valid = PyObject_IsTrue(is_valid);
        Py_DECREF(is_valid);
        if (valid < 0) return NULL;
        if (!valid) return Py_NewRef(empty_str);
    }
    /* The common case written out: a trace id of 32 ASCII characters, a span id of 64
     * bits, flags of 8. */
    if (PyUnicode_CheckExact(self->trace) && PyUnicode_IS_COMPACT_ASCII(self->trace) &&
        PyUnicode_GET_LENGTH(self->trace) == 32 && PyLong_CheckExact(self->span_id) &&
        PyLong_CheckExact(self->flags)) {
        unsigned long long span_id = PyLong_AsUnsignedLongLong(self->span_id);
        long flags = PyLong_AsLong(self->flags);
        if (!PyErr_Occurred() && flags >= 0 && flags <= 0xFF) {
            static const char hex[] = "0123456789abcdef";
            PyObject *text = PyUnicode_New(55, 127);
            if (text == NULL) return NULL;
            Py_UCS1 *out = PyUnicode_1BYTE_DATA(text);
            memcpy(out, "00-", 3);
            memcpy(out + 3, PyUnicode_1BYTE_DATA(self->trace), 32);
            out[35] = '-';
            for (int i = 15; i >= 0; i--, span_id >>= 4) out[36 + i] = hex[span_id & 0xF];
            out[52] = '-';
            out[53] = hex[(flags >> 4) & 0xF];
            out[54] = hex[flags & 0xF];
            return text;
        }
        PyErr_Clear();
    }
    /* (any other value: as the f-string formats it, its result or its error) */
    PyObject *trace = PyObject_Format(self->trace, empty_str);
    PyObject *span_id = trace ? PyObject_Format(self->span_id, hex_16) : NULL;
    PyObject *flags = span_id ? PyObject_Format(self->flags, hex_2) : NULL;
    PyObject *text = flags ? PyUnicode_FromFormat("00-%U-%U-%U", trace, span_id, flags) : NULL;
    Py_XDECREF(trace);
    Py_XDECREF(span_id);
    Py_XDECREF(flags);
    return text;
}

static PyGetSetDef span_getset[] = {
    {"traceparent", (getter)span_traceparent, NULL,
     "The span's W3C traceparent: LeanSpan.traceparent.", NULL},
    {NULL},
};

/* LeanSpan.is_recording: until it ends. */
static PyObject *span_is_recording(SpanCore *self, PyObject *unused) {
    if (!FIELD(self, end_time)) return NULL;
    return Py_NewRef(self->end_time == Py_None ? Py_True : Py_False);
}

static PyMethodDef span_methods[] = {
    {"is_recording", (PyCFunction)span_is_recording, METH_NOARGS,
     "Whether the span has not ended: LeanSpan.is_recording."},
    {"end", (PyCFunction)(void (*)(void))span_end, METH_FASTCALL | METH_KEYWORDS,
     "End the span (once): LeanSpan.end."},
    {"record", (PyCFunction)span_record, METH_NOARGS,
     "The span as steplog.span_export sends it: LeanSpan.record."},
    {"add_own_event", (PyCFunction)(void (*)(void))span_add_own_event, METH_FASTCALL,
     "An event of steplog's own: LeanSpan.add_own_event."},
    {"set_own_attributes", (PyCFunction)span_set_own_attributes, METH_O,
     "Attributes of steplog's own: LeanSpan.set_own_attributes."},
    {NULL},
};

#define MEMBER(f) {"_" #f, T_OBJECT_EX, offsetof(SpanCore, f), 0, NULL},
static PyMemberDef span_members[] = {SPAN_FIELDS(MEMBER){NULL}};
#undef MEMBER

static PyTypeObject SpanCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "steplog._span_speedups.SpanCore",
    .tp_doc = "The fields of a LeanSpan and its methods on every span's path.",
    .tp_basicsize = sizeof(SpanCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)span_dealloc,
    .tp_traverse = (traverseproc)span_traverse,
    .tp_clear = (inquiry)span_clear,
    .tp_methods = span_methods,
    .tp_members = span_members,
    .tp_getset = span_getset,
};

/* ------------------------------------------------------------------------------------ */
/* QueueEmit: a batch processor's `emit` (opentelemetry.sdk._shared_internal's
 * BatchProcessor), for the records every sampled span ends with. What it does for a
 * record while the processor runs in the process that made it and its queue has room:
 * append the record to the queue and, when a batch waits, wake the processor's thread,
 * as `emit` does, without its Python (nor its `os.getpid()`: a fork is seen by
 * `pthread_atfork` instead). Anything else (a processor shut down, a queue full, a
 * forked child) is the processor's own `emit`, which logs, counts drops and starts
 * over after a fork. */

static unsigned long forks; /* how many times this process's line forked (child side) */

static void forked(void) { forks++; }

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *processor;  /* the BatchProcessor */
    PyObject *emit;       /* its emit */
    PyObject *appendleft; /* its queue's appendleft */
    PyObject *queue;
    Py_ssize_t batch; /* its batch size */
    Py_ssize_t limit; /* its queue's size */
    unsigned long forks;
} QueueEmit;

static PyObject *s_shutdown, *s_queue, *s_max_queue_size, *s_max_export_batch_size,
    *s_worker_awaken, *s_appendleft, *s_emit_name, *s_is_set, *s_set;

static int emit_traverse(QueueEmit *self, visitproc visit, void *arg) {
    Py_VISIT(self->processor);
    Py_VISIT(self->emit);
    Py_VISIT(self->appendleft);
    Py_VISIT(self->queue);
    return 0;
}

static int emit_clear(QueueEmit *self) {
    Py_CLEAR(self->processor);
    Py_CLEAR(self->emit);
    Py_CLEAR(self->appendleft);
    Py_CLEAR(self->queue);
    return 0;
}

static void emit_dealloc(QueueEmit *self) {
    PyObject_GC_UnTrack(self);
    emit_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *emit_call(QueueEmit *self, PyObject *const *args, size_t nargsf,
                           PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 1 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "QueueEmit takes one record");
        return NULL;
    }
    PyObject *record = args[0];
    if (self->forks != forks) return PyObject_CallOneArg(self->emit, record);
    PyObject *shutdown = PyObject_GetAttr(self->processor, s_shutdown);
    if (shutdown == NULL) return NULL;
    int down = PyObject_IsTrue(shutdown);
    Py_DECREF(shutdown);
    if (down < 0) return NULL;
    Py_ssize_t held = PyObject_Length(self->queue);
    if (held < 0) return NULL;
    if (down || held >= self->limit) return PyObject_CallOneArg(self->emit, record);
    PyObject *done = PyObject_CallOneArg(self->appendleft, record);
    if (done == NULL) return NULL;
    Py_DECREF(done);
    if (held + 1 >= self->batch) { /* (its thread's Event, as it is now) */
        PyObject *awaken = PyObject_GetAttr(self->processor, s_worker_awaken);
        if (awaken == NULL) return NULL;
        PyObject *is_set = PyObject_CallMethodNoArgs(awaken, s_is_set);
        int awake = is_set == NULL ? -1 : PyObject_IsTrue(is_set);
        Py_XDECREF(is_set);
        PyObject *set = awake == 0 ? PyObject_CallMethodNoArgs(awaken, s_set) : Py_None;
        Py_DECREF(awaken);
        if (awake < 0 || set == NULL) return NULL;
        if (set != Py_None) Py_DECREF(set);
    }
    Py_RETURN_NONE;
}

static PyObject *emit_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    PyObject *processor;
    if (!PyArg_ParseTuple(args, "O:QueueEmit", &processor)) return NULL;
    QueueEmit *self = (QueueEmit *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->vectorcall = (vectorcallfunc)emit_call;
    self->forks = forks;
    self->processor = Py_NewRef(processor);
    if ((self->emit = PyObject_GetAttr(processor, s_emit_name)) == NULL ||
        (self->queue = PyObject_GetAttr(processor, s_queue)) == NULL ||
        (self->appendleft = PyObject_GetAttr(self->queue, s_appendleft)) == NULL ||
        (self->batch = size_attribute(processor, s_max_export_batch_size)) < 0 ||
        (self->limit = size_attribute(processor, s_max_queue_size)) < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "QueueEmit: a negative batch or queue size");
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static PyTypeObject QueueEmitType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "steplog._span_speedups.QueueEmit",
    .tp_doc = "QueueEmit(batch_processor): its emit, for a record, in C.",
    .tp_basicsize = sizeof(QueueEmit),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = emit_new,
    .tp_dealloc = (destructor)emit_dealloc,
    .tp_traverse = (traverseproc)emit_traverse,
    .tp_clear = (inquiry)emit_clear,
    .tp_vectorcall_offset = offsetof(QueueEmit, vectorcall),
    .tp_call = PyVectorcall_Call,
};

/* ------------------------------------------------------------------------------------ */
/* CurrentSpan: steplog.tracing's _CurrentSpan. */

typedef struct {
    PyObject_HEAD
    PyObject *span;
    PyObject *token;
    int record;
} CurrentSpan;

static int current_traverse(CurrentSpan *self, visitproc visit, void *arg) {
    Py_VISIT(self->span);
    Py_VISIT(self->token);
    return 0;
}

static int current_clear(CurrentSpan *self) {
    Py_CLEAR(self->span);
    Py_CLEAR(self->token);
    return 0;
}

static void current_dealloc(CurrentSpan *self) {
    PyObject_GC_UnTrack(self);
    current_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *current_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    PyObject *span;
    int record;
    if (!ready()) return NULL;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs)) {
        PyErr_SetString(PyExc_TypeError, "CurrentSpan() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "Op:CurrentSpan", &span, &record)) return NULL;
    CurrentSpan *self = (CurrentSpan *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->span = Py_NewRef(span);
    self->record = record;
    return (PyObject *)self;
}

static PyObject *make_current(PyObject *span, PyObject **token) {
    /* A copy of the current context with ``span`` as its span, set current: what
     * set_span_in_context and attach do (a Context refuses __setitem__; the dict's own
     * is used, as in Python). */
    PyObject *now;
    if (PyContextVar_Get(current_var, NULL, &now) < 0) return NULL;
    if (now == NULL) {
        PyErr_SetString(PyExc_LookupError, "no current context");
        return NULL;
    }
    PyObject *context = PyObject_CallOneArg(context_type, now);
    Py_DECREF(now);
    if (context == NULL) return NULL;
    if (PyDict_SetItem(context, span_key, span) < 0) {
        Py_DECREF(context);
        return NULL;
    }
    PyObject *set = PyContextVar_Set(current_var, context);
    Py_DECREF(context);
    if (set == NULL) return NULL;
    Py_XSETREF(*token, set);
    return Py_NewRef(span);
}

static PyObject *current_enter(CurrentSpan *self, PyObject *unused) {
    return make_current(self->span, &self->token);
}

/* The exception being raised, taken (and normalized). */
static PyObject *take_exception(void) {
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (traceback != NULL && value != NULL) PyException_SetTraceback(value, traceback);
    Py_XDECREF(type);
    Py_XDECREF(traceback);
    return value;
#endif
}

/* The context reset (a failure logged, not raised: as context_api.detach); an Exception
 * (not a BaseException: a cancellation is no error) recorded on a span that records;
 * the span ended. */
static PyObject *exit_span(PyObject *span, PyObject *token, int record, PyObject *error) {
    if (token != NULL && PyContextVar_Reset(current_var, token) < 0) {
        PyObject *failure = take_exception();
        PyObject *r = PyObject_CallOneArg(detach_failed, failure ? failure : Py_None);
        Py_XDECREF(failure);
        if (r == NULL) return NULL;
        Py_DECREF(r);
    }
    if (record && !is_none(error)) {
        int is_exception = PyObject_IsInstance(error, PyExc_Exception);
        if (is_exception < 0) return NULL;
        if (is_exception) {
            PyObject *recording = PyObject_CallMethodNoArgs(span, s_is_recording);
            if (recording == NULL) return NULL;
            int yes = PyObject_IsTrue(recording);
            Py_DECREF(recording);
            if (yes < 0) return NULL;
            if (yes) {
                PyObject *r = PyObject_CallFunctionObjArgs(fail_hook, span, error, NULL);
                if (r == NULL) return NULL;
                Py_DECREF(r);
            }
        }
    }
    if (PyObject_TypeCheck(span, &SpanCoreType)) return span_end_at((SpanCore *)span, NULL);
    return PyObject_CallMethodNoArgs(span, s_end);
}

static PyObject *current_exit(CurrentSpan *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "__exit__() takes 3 arguments");
        return NULL;
    }
    PyObject *r = exit_span(self->span, self->token, self->record, args[1]);
    if (r == NULL) return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE; /* (the exception, if any, goes on) */
}

static PyMethodDef current_methods[] = {
    {"__enter__", (PyCFunction)current_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))current_exit, METH_FASTCALL, NULL},
    {NULL},
};

static PyTypeObject CurrentSpanType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "steplog._span_speedups.CurrentSpan",
    .tp_doc = "CurrentSpan(span, record): _CurrentSpan, the span made current in a with block.",
    .tp_basicsize = sizeof(CurrentSpan),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = current_new,
    .tp_dealloc = (destructor)current_dealloc,
    .tp_traverse = (traverseproc)current_traverse,
    .tp_clear = (inquiry)current_clear,
    .tp_methods = current_methods,
};

/* ------------------------------------------------------------------------------------ */
/* child(): LeanTracer._unparsed_child. */

static int hex_digit(Py_UCS1 c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1; /* (upper case is not what steplog writes: the propagator reads it) */
}

/* Whether ``s[from:to]`` is lower-case hex digits, and whether any is not 0. */
static int hex_run(const Py_UCS1 *s, int from, int to, int *nonzero) {
    *nonzero = 0;
    for (int i = from; i < to; i++) {
        int d = hex_digit(s[i]);
        if (d < 0) return 0;
        if (d) *nonzero = 1;
    }
    return 1;
}

/* A truthy attribute of the tracer (-1: an error). */
static int tracer_flag(PyObject *tracer, PyObject *name) {
    PyObject *value = PyObject_GetAttr(tracer, name);
    if (value == NULL) return -1;
    int yes = PyObject_IsTrue(value);
    Py_DECREF(value);
    return yes;
}

/* Whether the tracer's processors are still the ones its hooks were made for. */
static int same_processors(PyObject *tracer) {
    PyObject *known = PyObject_GetAttr(tracer, s_processors);
    if (known == NULL) return -1;
    PyObject *processor = PyObject_GetAttr(tracer, s_processor);
    if (processor == NULL) {
        Py_DECREF(known);
        return -1;
    }
    PyObject *now = PyObject_GetAttr(processor, s_span_processors);
    Py_DECREF(processor);
    if (now == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            Py_DECREF(known);
            return -1;
        }
        PyErr_Clear();
        now = Py_NewRef(Py_None);
    }
    int same = known == now;
    Py_DECREF(known);
    Py_DECREF(now);
    return same;
}

static PyObject *new_span_id(PyObject *tracer) {
    int random = tracer_flag(tracer, s_random_span_ids);
    if (random < 0) return NULL;
    if (!random) return PyObject_CallMethodNoArgs(tracer, s_span_id);
    for (;;) { /* (RandomIdGenerator's: getrandbits(64), never 0) */
        PyObject *id = PyObject_CallOneArg(getrandbits, sixty_four);
        if (id == NULL) return NULL;
        int nonzero = PyObject_IsTrue(id);
        if (nonzero) {
            if (nonzero < 0) {
                Py_DECREF(id);
                return NULL;
            }
            return id;
        }
        Py_DECREF(id);
    }
}

/* Whether 0 < id < 2**64 (a valid span id). */
static int valid_span_id(PyObject *id) {
    if (!PyLong_Check(id)) return 0;
    int overflow;
    long long small = PyLong_AsLongLongAndOverflow(id, &overflow);
    if (small == -1 && PyErr_Occurred()) return -1;
    if (overflow < 0 || (overflow == 0 && small <= 0)) return 0;
    if (overflow == 0) return 1;
    unsigned long long big = PyLong_AsUnsignedLongLong(id);
    if (big == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return -1;
        PyErr_Clear();
        return 0;
    }
    return 1;
}

static int plain_values(PyObject *attributes) {
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(attributes, &pos, &key, &value)) {
        PyTypeObject *type = Py_TYPE(value);
        if (type != &PyUnicode_Type && type != &PyBool_Type && type != &PyLong_Type &&
            type != &PyFloat_Type)
            return 0;
    }
    return 1;
}

/* Whether the tracer calls no on_start, and its hooks are for the processors it has
 * (-1: an error). */
static int hooks_current(PyObject *tracer) {
    Py_ssize_t starts = tracer_count(tracer, s_starts);
    if (starts != 0) return starts < 0 ? -1 : 0;
    return same_processors(tracer);
}

/* Whether the tracer samples a child with its sampled parent and its hooks are current
 * (-1: an error). */
static int tracer_admits(PyObject *tracer) {
    int yes = tracer_flag(tracer, s_samples_children);
    if (yes <= 0) return yes;
    return hooks_current(tracer);
}

/* Whether a span may take ``attributes`` without the Python's checks: None, or a dict
 * within the tracer's limit, of plain values unless it is steplog's ``own`` (-1: an
 * error). Asked before any id is drawn, so that a span left to the Python draws its
 * ids as though C had not looked. */
static int attributes_admitted(PyObject *tracer, PyObject *attributes, int own) {
    if (attributes == Py_None) return 1;
    if (!PyDict_Check(attributes)) return 0;
    if (PyDict_GET_SIZE(attributes) == 0) return 1;
    Py_ssize_t limit = size_attribute(tracer, s_max_attributes);
    if (limit == -1 && PyErr_Occurred()) return -1;
    return PyDict_GET_SIZE(attributes) <= limit && (own || plain_values(attributes));
}

/* The span of span_type that `child`, `local_child` and `root` start (a new reference),
 * None when its new id is not valid, NULL on an error; its attributes admitted
 * (`attributes_admitted`). Takes ``trace`` (a new reference) whatever it returns. */
static PyObject *make_span(PyObject *tracer, PyTypeObject *type, PyObject *name,
                           PyObject *kind, PyObject *trace, long flags_value,
                           PyObject *trace_state, PyObject *parent, PyObject *attributes,
                           int own) {
    int has_attributes = attributes != Py_None && PyDict_GET_SIZE(attributes) > 0;
    PyObject *span_id = new_span_id(tracer);
    if (span_id == NULL) {
        Py_DECREF(trace);
        return NULL;
    }
    int valid = valid_span_id(span_id);
    if (valid <= 0) {
        Py_DECREF(span_id);
        Py_DECREF(trace);
        return valid < 0 ? NULL : Py_NewRef(Py_None);
    }
    PyObject *flags = PyLong_FromLong(flags_value);
    PyObject *recorded = has_attributes ? (own ? Py_NewRef(attributes) : PyDict_Copy(attributes))
                                        : PyDict_New();
    PyObject *start = now_ns();
    SpanCore *span = NULL;
    if (flags != NULL && recorded != NULL && start != NULL)
        span = (SpanCore *)type->tp_alloc(type, 0);
    if (span == NULL) {
        Py_DECREF(span_id);
        Py_DECREF(trace);
        Py_XDECREF(flags);
        Py_XDECREF(recorded);
        Py_XDECREF(start);
        return NULL;
    }
    span->tracer = Py_NewRef(tracer);
    span->name = Py_NewRef(name);
    span->kind = Py_NewRef(kind);
    span->trace = trace;
    span->span_id = span_id;
    span->flags = flags;
    span->trace_state = Py_NewRef(trace_state);
    span->parent = Py_NewRef(parent);
    span->attributes = recorded;
    span->links = Py_NewRef(empty_tuple);
    span->start_time = start;
    span->context = Py_NewRef(Py_None);
    span->end_time = Py_NewRef(Py_None);
    span->events = Py_NewRef(empty_tuple);
    span->status = Py_NewRef(unset_status);
    span->dropped_attributes = Py_NewRef(zero);
    span->dropped_events = Py_NewRef(zero);
    return (PyObject *)span;
}

static int is_span_type(PyObject *span_type) {
    if (PyType_Check(span_type) && PyType_IsSubtype((PyTypeObject *)span_type, &SpanCoreType))
        return 1;
    PyErr_SetString(PyExc_TypeError, "span_type is not a SpanCore");
    return 0;
}

static PyObject *child(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError,
                        "child(tracer, span_type, name, traceparent, kind, attributes, own)");
        return NULL;
    }
    if (!ready()) return NULL;
    PyObject *tracer = args[0], *span_type = args[1], *name = args[2], *traceparent = args[3],
             *kind = args[4], *attributes = args[5];
    int own = PyObject_IsTrue(args[6]);
    if (own < 0) return NULL;
    if (!is_span_type(span_type)) return NULL;
    /* What steplog writes: "00-" 32 hex "-" 16 hex "-" 2 hex, lower case. */
    if (!PyUnicode_CheckExact(traceparent) || PyUnicode_GET_LENGTH(traceparent) != 55 ||
        PyUnicode_KIND(traceparent) != PyUnicode_1BYTE_KIND)
        Py_RETURN_NONE;
    const Py_UCS1 *s = PyUnicode_1BYTE_DATA(traceparent);
    int trace_nonzero, parent_nonzero, flags_nonzero;
    if (s[0] != '0' || s[1] != '0' || s[2] != '-' || s[35] != '-' || s[52] != '-' ||
        !hex_run(s, 3, 35, &trace_nonzero) || !hex_run(s, 36, 52, &parent_nonzero) ||
        !hex_run(s, 53, 55, &flags_nonzero))
        Py_RETURN_NONE;
    long parent_flags = hex_digit(s[53]) * 16 + hex_digit(s[54]);
    int yes = tracer_admits(tracer);
    if (yes <= 0) return yes < 0 ? NULL : Py_NewRef(Py_None);
    if (!(parent_flags & sampled_flag) || !trace_nonzero || !parent_nonzero) Py_RETURN_NONE;
    yes = attributes_admitted(tracer, attributes, own);
    if (yes <= 0) return yes < 0 ? NULL : Py_NewRef(Py_None);
    PyObject *trace = PyUnicode_Substring(traceparent, 3, 35);
    if (trace == NULL) return NULL;
    return make_span(tracer, (PyTypeObject *)span_type, name, kind, trace,
                     parent_flags & (sampled_flag | random_flag), no_trace_state, traceparent,
                     attributes, own);
}

/* `start_span`'s span for a child of the current span when that is a SpanCore of this
 * process (a request's span, the span a handler's own spans start under): its trace id,
 * flags and trace state, its SpanContext as the parent (local), without the context's
 * and the sampler's calls. None: `start_span` decides (a parent not sampled or not
 * valid, attributes to check, a tracer that needs its sampler or on_start calls). */
static PyObject *local_child(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError,
                        "local_child(tracer, span_type, parent, name, kind, attributes, own)");
        return NULL;
    }
    if (!ready()) return NULL;
    PyObject *tracer = args[0], *span_type = args[1], *parent = args[2], *name = args[3],
             *kind = args[4], *attributes = args[5];
    int own = PyObject_IsTrue(args[6]);
    if (own < 0) return NULL;
    if (!is_span_type(span_type)) return NULL;
    if (!PyObject_TypeCheck(parent, &SpanCoreType)) Py_RETURN_NONE;
    SpanCore *p = (SpanCore *)parent;
    if (p->trace == NULL || p->flags == NULL || p->trace_state == NULL ||
        !PyUnicode_CheckExact(p->trace) || !PyLong_CheckExact(p->flags))
        Py_RETURN_NONE;
    long parent_flags = PyLong_AsLong(p->flags);
    if (parent_flags == -1 && PyErr_Occurred()) return NULL;
    int yes = tracer_admits(tracer);
    if (yes <= 0) return yes < 0 ? NULL : Py_NewRef(Py_None);
    if (!(parent_flags & sampled_flag)) Py_RETURN_NONE;
    yes = attributes_admitted(tracer, attributes, own);
    if (yes <= 0) return yes < 0 ? NULL : Py_NewRef(Py_None);
    /* The parent's SpanContext (built once, kept by the parent): what the SDK's span
     * holds as its parent, and what says whether the parent is valid. */
    PyObject *context = PyObject_CallMethodNoArgs(parent, s_get_span_context);
    if (context == NULL) return NULL;
    PyObject *valid = PyTuple_Check(context) && PyTuple_GET_SIZE(context) == 6
                          ? PyTuple_GET_ITEM(context, 5)
                          : NULL;
    int is_valid = valid == NULL ? 0 : PyObject_IsTrue(valid);
    if (is_valid <= 0) {
        Py_DECREF(context);
        return is_valid < 0 ? NULL : Py_NewRef(Py_None);
    }
    PyObject *span = make_span(tracer, (PyTypeObject *)span_type, name, kind,
                               Py_NewRef(p->trace), parent_flags & (sampled_flag | random_flag),
                               p->trace_state, context, attributes, own);
    Py_DECREF(context);
    return span;
}

/* `start_span`'s span for a new trace under a tracer that samples every root
 * (`LeanTracer.samples_roots`: a static sampler's RECORD_AND_SAMPLE, the SDK's random
 * ids): a request's span when no traceparent came. None: `start_span` decides. */
static PyObject *root(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "root(tracer, span_type, name, kind, attributes, own)");
        return NULL;
    }
    if (!ready()) return NULL;
    PyObject *tracer = args[0], *span_type = args[1], *name = args[2], *kind = args[3],
             *attributes = args[4];
    int own = PyObject_IsTrue(args[5]);
    if (own < 0) return NULL;
    if (!is_span_type(span_type)) return NULL;
    int yes = tracer_flag(tracer, s_samples_roots);
    if (yes > 0) yes = hooks_current(tracer);
    if (yes > 0) yes = attributes_admitted(tracer, attributes, own);
    if (yes <= 0) return yes < 0 ? NULL : Py_NewRef(Py_None);
    PyObject *random_ids = PyObject_GetAttr(tracer, s_random_ids);
    if (random_ids == NULL) return NULL;
    long random = PyLong_AsLong(random_ids);
    Py_DECREF(random_ids);
    if (random == -1 && PyErr_Occurred()) return NULL;
    PyObject *trace_id = NULL;
    for (;;) { /* (RandomIdGenerator's generate_trace_id: getrandbits(128), never 0) */
        trace_id = PyObject_CallOneArg(getrandbits, one_twenty_eight);
        if (trace_id == NULL) return NULL;
        int nonzero = PyObject_IsTrue(trace_id);
        if (nonzero) {
            if (nonzero < 0) {
                Py_DECREF(trace_id);
                return NULL;
            }
            break;
        }
        Py_DECREF(trace_id);
    }
    PyObject *trace = PyObject_Format(trace_id, hex_32);
    Py_DECREF(trace_id);
    if (trace == NULL) return NULL;
    if (!PyUnicode_Check(trace) || PyUnicode_GET_LENGTH(trace) != 32) {
        /* (beyond 128 bits: not the SDK's generator) */
        Py_DECREF(trace);
        Py_RETURN_NONE;
    }
    return make_span(tracer, (PyTypeObject *)span_type, name, kind, trace,
                     sampled_flag | (random & random_flag), no_trace_state, Py_None,
                     attributes, own);
}

/* ------------------------------------------------------------------------------------ */

static PyObject *configure(PyObject *module, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"current_var",  "span_key",   "context_type", "unset_status",
                            "unset_record", "trace_state", "getrandbits", "fail",
                            "detach_failed", "link_records", "sampled", "random", NULL};
    PyObject *values[10];
    long sampled, random;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "$OOOOOOOOOOll:configure", names,
                                     &values[0], &values[1], &values[2], &values[3],
                                     &values[4], &values[5], &values[6], &values[7],
                                     &values[8], &values[9], &sampled, &random))
        return NULL;
    PyObject **slots[] = {&current_var,  &span_key,     &context_type, &unset_status,
                          &unset_record, &no_trace_state, &getrandbits, &fail_hook,
                          &detach_failed, &link_records};
    for (int i = 0; i < 10; i++) Py_XSETREF(*slots[i], Py_NewRef(values[i]));
    sampled_flag = sampled;
    random_flag = random;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"configure", (PyCFunction)(void (*)(void))configure, METH_VARARGS | METH_KEYWORDS,
     "What the module needs of OpenTelemetry and steplog.tracing (once, at its import)."},
    {"child", (PyCFunction)(void (*)(void))child, METH_FASTCALL,
     "child(tracer, span_type, name, traceparent, kind, attributes, own): "
     "LeanTracer._unparsed_child, a span of span_type or None."},
    {"root", (PyCFunction)(void (*)(void))root, METH_FASTCALL,
     "root(tracer, span_type, name, kind, attributes, own): "
     "LeanTracer.start_span's span of a new trace, a span of span_type or None."},
    {"local_child", (PyCFunction)(void (*)(void))local_child, METH_FASTCALL,
     "local_child(tracer, span_type, parent, name, kind, attributes, own): "
     "LeanTracer.start_span's child of a current SpanCore, a span of span_type or None."},
    {NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "steplog._span_speedups",
    .m_doc = "A LeanSpan's life in C (steplog/_span_speedups.c).",
    .m_size = -1,
    .m_methods = module_methods,
};

#define INTERN(var, text)                                    \
    if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL;

PyMODINIT_FUNC PyInit__span_speedups(void) {
    INTERN(s_takes_records, "takes_records");
    INTERN(s_emits, "emits");
    INTERN(s_ends, "ends");
    INTERN(s_hand_readable, "_hand_readable");
    INTERN(s_group, "group");
    INTERN(s_value_, "_value_");
    INTERN(s_dict, "_dict");
    INTERN(s_to_header, "to_header");
    INTERN(s_max_events, "max_events");
    INTERN(s_max_attributes, "max_attributes");
    INTERN(s_add_event, "add_event");
    INTERN(s_set_attributes, "set_attributes");
    INTERN(s_status_code, "status_code");
    INTERN(s_description, "description");
    INTERN(s_end, "end");
    INTERN(s_is_recording, "is_recording");
    INTERN(s_samples_children, "samples_children");
    INTERN(s_starts, "starts");
    INTERN(s_processors, "_processors");
    INTERN(s_processor, "processor");
    INTERN(s_span_processors, "_span_processors");
    INTERN(s_random_span_ids, "random_span_ids");
    INTERN(s_span_id, "_span_id");
    INTERN(s_get_span_context, "get_span_context");
    INTERN(s_samples_roots, "samples_roots");
    INTERN(s_random_ids, "random_ids");
    INTERN(hex_32, "032x");
    INTERN(empty_str, "");
    INTERN(hex_16, "016x");
    INTERN(s_shutdown, "_shutdown");
    INTERN(s_queue, "_queue");
    INTERN(s_max_queue_size, "_max_queue_size");
    INTERN(s_max_export_batch_size, "_max_export_batch_size");
    INTERN(s_worker_awaken, "_worker_awaken");
    INTERN(s_appendleft, "appendleft");
    INTERN(s_emit_name, "emit");
    INTERN(s_is_set, "is_set");
    INTERN(s_set, "set");
    INTERN(hex_2, "02x");
    if ((empty_tuple = PyTuple_New(0)) == NULL) return NULL;
    if ((zero = PyLong_FromLong(0)) == NULL) return NULL;
    if ((sixty_four = PyLong_FromLong(64)) == NULL) return NULL;
    if ((one_twenty_eight = PyLong_FromLong(128)) == NULL) return NULL;
    if (PyType_Ready(&SpanCoreType) < 0 || PyType_Ready(&CurrentSpanType) < 0 ||
        PyType_Ready(&QueueEmitType) < 0)
        return NULL;
    if (pthread_atfork(NULL, NULL, forked) != 0) {
        PyErr_SetString(PyExc_OSError, "pthread_atfork failed");
        return NULL;
    }
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) return NULL;
    if (PyModule_AddObjectRef(module, "SpanCore", (PyObject *)&SpanCoreType) < 0 ||
        PyModule_AddObjectRef(module, "CurrentSpan", (PyObject *)&CurrentSpanType) < 0 ||
        PyModule_AddObjectRef(module, "QueueEmit", (PyObject *)&QueueEmitType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
