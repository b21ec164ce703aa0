/* rechat._fused: the gateway's hot byte tests in C, imported through rechat/speedups.py.

Owns seven byte tests, each the C form of Python that stays beside its caller and gives the
same answer: `event` and `events`, the SSE stream rewriter's fused path for a piece of one
event or of several (`rechat.rewrite.SSEStreamRewriter.feed` and `_bulk`, the rule in its
class docstring and `_make_plan`; `rechat.modelmap.ModelRestore.feed_raw_events`), with
`learn_events` for a stream's first piece (`learn`, then `events`), `touches`,
whether a piece concerns the transform that rewriter has set aside (`feed`),
`locate`, the model's place in an answer of the usual shape (`rechat.modelmap._locate`),
`learn`, the same kept for a stream's next chunks (`rechat.modelmap.ModelRestore._learn`), and
`swap`, a request's model renamed in its bytes (`rechat.modelmap.rewrite_request_bytes`).
In Python each is a dozen bytes-method calls or scans, each a few hundred instructions of
CPython's call machinery around a memchr; here it is the memchrs. Optional: setup.py marks
the extension optional and the callers fall back to their Python when it is not built or
RECHAT_NO_EXTENSIONS is set; tests/test_fused.py checks each against its rule, and the
rewrite, think and model-map tests run both paths.
*/
#define PY_SSIZE_T_CLEAN
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include <Python.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* The key the model map looks for, and its Horspool table (built on first use). */
static const char KEY[] = "\"model\"";
#define KEY_LEN 7
static unsigned char key_skip[256];
static int key_skip_ready = 0;

/* Horspool's shift table for the needle p[0:m], 2 <= m <= 255. */
static void
make_skip(unsigned char *skip, const unsigned char *p, Py_ssize_t m)
{
    memset(skip, (int)m, 256);
    for (Py_ssize_t i = 0; i < m - 1; i++)
        skip[p[i]] = (unsigned char)(m - 1 - i);
}

/* The index of the first p[0:m] in t[0:n], or -1: Horspool's search (R. N. Horspool,
   "Practical fast searching in strings", 1980) with its table `skip`. For these short
   needles over a few hundred bytes it beats glibc's memmem, whose two-way set-up costs more
   than the search. */
static Py_ssize_t
horspool(const unsigned char *t, Py_ssize_t n, const unsigned char *p, Py_ssize_t m,
         const unsigned char *skip)
{
    unsigned char last = p[m - 1];
    for (Py_ssize_t i = 0; i <= n - m; i += skip[t[i + m - 1]]) {
        if (t[i + m - 1] == last && memcmp(t + i, p, (size_t)(m - 1)) == 0)
            return i;
    }
    return -1;
}

/* The index of the first ``"model"`` in s[0:n], or -1. With SSE2 (every x86-64), 16
   places at a time: those with an m after them and an l five bytes on (the key's 2nd and
   6th bytes, rarely that far apart in JSON text) are compared whole (W. Mula, "SIMD-friendly
   algorithms for substring searching", 2016); the last places, and other machines, by
   Horspool's search. About half the instructions of Horspool's over a chunk. */
static Py_ssize_t
find_key(const char *s, Py_ssize_t n)
{
    Py_ssize_t i = 0;
#if defined(__SSE2__)
    const __m128i m = _mm_set1_epi8('m'), l = _mm_set1_epi8('l');
    for (; i + 22 <= n; i += 16) {  /* the places i..i+15, each with its 7 bytes in s */
        __m128i a = _mm_loadu_si128((const __m128i *)(s + i + 1));
        __m128i b = _mm_loadu_si128((const __m128i *)(s + i + 5));
        unsigned int mask = (unsigned int)_mm_movemask_epi8(
            _mm_and_si128(_mm_cmpeq_epi8(a, m), _mm_cmpeq_epi8(b, l)));
        while (mask) {
            int bit = __builtin_ctz(mask);
            if (memcmp(s + i + bit, KEY, KEY_LEN) == 0)
                return i + bit;
            mask &= mask - 1;
        }
    }
#endif
    if (!key_skip_ready) {
        make_skip(key_skip, (const unsigned char *)KEY, KEY_LEN);
        key_skip_ready = 1;
    }
    Py_ssize_t j = horspool((const unsigned char *)s + i, n - i, (const unsigned char *)KEY,
                            KEY_LEN, key_skip);
    return j < 0 ? -1 : i + j;
}

/* Whether the m bytes at p are the key. */
static int
is_key(const char *p, Py_ssize_t m)
{
    return m == KEY_LEN && memcmp(p, KEY, KEY_LEN) == 0;
}

/* Whether s[0:n] holds `stop` (m bytes). An empty stop is taken as held (the caller then
   takes the general path): Python's partition would raise for one. One byte: memchr; two:
   memchr for the first, then the second; the key: its kept table; longer: Horspool. */
static int
holds(const char *s, Py_ssize_t n, const char *stop, Py_ssize_t m)
{
    const unsigned char *p = (const unsigned char *)stop;
    const unsigned char *t = (const unsigned char *)s;
    if (m == 1)
        return memchr(s, p[0], (size_t)n) != NULL;
    if (m == 0)
        return 1;
    if (m > n)
        return 0;
    if (m == 2) {
        const unsigned char *q = t, *end = t + n - 1;
        while (q < end && (q = memchr(q, p[0], (size_t)(end - q))) != NULL) {
            if (q[1] == p[1])
                return 1;
            q++;
        }
        return 0;
    }
    if (is_key(stop, m))
        return find_key(s, n) >= 0;
    if (m > 255)
        return memmem(s, (size_t)n, p, (size_t)m) != NULL;
    unsigned char skip[256];
    make_skip(skip, p, m);
    return horspool(t, n, p, m, skip) >= 0;
}

/* A fused plan's parts (`rechat.rewrite.SSEStreamRewriter._make_plan`), checked. */
typedef struct {
    PyObject *stops, *tail;        /* tuples of bytes */
    const char *head, *new;        /* new: NULL when nothing is renamed */
    Py_ssize_t h, k;               /* their lengths */
} Plan;

/* Whether `t` is a tuple of bytes only. */
static int
bytes_tuple(PyObject *t)
{
    if (!PyTuple_CheckExact(t))
        return 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(t); i++)
        if (!PyBytes_CheckExact(PyTuple_GET_ITEM(t, i)))
            return 0;
    return 1;
}

/* Fill `pl` from `plan`; 0 when it is not a plan's shape (the caller then declines). */
static int
read_plan(PyObject *plan, Plan *pl)
{
    if (!PyTuple_CheckExact(plan) || PyTuple_GET_SIZE(plan) < 4)
        return 0;
    PyObject *stops = PyTuple_GET_ITEM(plan, 0), *head = PyTuple_GET_ITEM(plan, 1);
    PyObject *new = PyTuple_GET_ITEM(plan, 2), *tail = PyTuple_GET_ITEM(plan, 3);
    if (!bytes_tuple(stops) || !PyBytes_CheckExact(head) || !bytes_tuple(tail)
            || (new != Py_None && !PyBytes_CheckExact(new)) || PyBytes_GET_SIZE(head) == 0)
        return 0;
    pl->stops = stops;
    pl->tail = tail;
    pl->head = PyBytes_AS_STRING(head);
    pl->h = PyBytes_GET_SIZE(head);
    pl->new = new == Py_None ? NULL : PyBytes_AS_STRING(new);
    pl->k = new == Py_None ? 0 : PyBytes_GET_SIZE(new);
    return 1;
}

/* Whether s[0:n] holds one of `stops` (a tuple of bytes). A stop that starts with a backslash (\\u) cannot occur where there is none (`slash` 0). */
static int
holds_any(const char *s, Py_ssize_t n, PyObject *stops, int slash)
{
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(stops); i++) {
        PyObject *stop = PyTuple_GET_ITEM(stops, i);
        const char *p = PyBytes_AS_STRING(stop);
        Py_ssize_t m = PyBytes_GET_SIZE(stop);
        if ((slash || m == 0 || p[0] != '\\') && holds(s, n, p, m))
            return 1;
    }
    return 0;
}

/* Whether the n bytes at s are one event the plan takes: ``data: {...}\n\n`` starting with
   its head, no other LF, none of its stops, no tail stop after the head. */
static int
takes(const char *s, Py_ssize_t n, const Plan *pl)
{
    if (n < pl->h + 3 || memcmp(s, pl->head, (size_t)pl->h) != 0
            || s[n - 3] != '}' || s[n - 2] != '\n' || s[n - 1] != '\n'
            || memchr(s, '\n', (size_t)(n - 2)) != NULL)
        return 0;
    int slash = memchr(s, '\\', (size_t)n) != NULL;
    return !holds_any(s, n, pl->stops, slash)
        && !holds_any(s + pl->h, n - pl->h, pl->tail, slash);
}

PyDoc_STRVAR(event_doc,
"event(data, plan, history) -> bytes | None\n\n"
"The fused path of rechat.rewrite.SSEStreamRewriter for one piece.\n\n"
"`plan` is the rewriter's fused rule (`_make_plan`): (stops, head, new, tail stops, ...),\n"
"all bytes or tuples of bytes but `new`, which may be None. When `data` (bytes) is one\n"
"``data: {...}\\n\\n`` event: it starts with `head`, ends with ``}\\n\\n``, holds no other\n"
"LF, none of `stops` (CR among them) anywhere and no tail stop after `head`, return\n"
"`data` (`new` None) or `new` + the rest after `head`. Otherwise None: the caller takes\n"
"its general path. When it returns bytes and `history` is a list, `data` is appended to\n"
"it (the pieces a set-aside transform has not seen). Raises TypeError only for a wrong\n"
"number of arguments, MemoryError when out of memory.");

static PyObject *
event(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "event() takes 3 arguments (data, plan, history)");
        return NULL;
    }
    PyObject *data = args[0], *history = args[2];
    Plan pl;
    if (!PyBytes_CheckExact(data) || !read_plan(args[1], &pl)
            || (history != Py_None && !PyList_Check(history)))
        Py_RETURN_NONE;
    const char *s = PyBytes_AS_STRING(data);
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    if (!takes(s, n, &pl))
        Py_RETURN_NONE;
    PyObject *out;
    if (pl.new == NULL)
        out = Py_NewRef(data);
    else {
        out = PyBytes_FromStringAndSize(NULL, pl.k + n - pl.h);
        if (out == NULL)
            return NULL;
        char *o = PyBytes_AS_STRING(out);
        memcpy(o, pl.new, (size_t)pl.k);
        memcpy(o + pl.k, s + pl.h, (size_t)(n - pl.h));
    }
    if (history != Py_None && PyList_Append(history, data) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

/* The stream's last event, which `events` passes on as is after its events. */
static const char DONE[] = "data: [DONE]\n\n";
#define DONE_LEN 14

/* The index of the first LF in s[from:n], or -1 when there is none; -2 when, with `key`, a
   ``"model"`` starts before it (at `from` or after). With SSE2, one pass over 16 places at
   a time looks for both (find_key's test beside a compare with LF); else memchr, then
   find_key before the LF. */
static Py_ssize_t
line_end(const char *s, Py_ssize_t from, Py_ssize_t n, int key)
{
    Py_ssize_t i = from;
#if defined(__SSE2__)
    /* (Without `key`, NUL stands for the m: a place it marks fails the compare with KEY.) */
    const __m128i m = _mm_set1_epi8(key ? 'm' : 0), l = _mm_set1_epi8('l');
    const __m128i nl = _mm_set1_epi8('\n');
    for (; i + 22 <= n; i += 16) {  /* the places i..i+15, each with its 7 bytes in s */
        __m128i a = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(s + i)), nl);
        __m128i b = _mm_and_si128(
            _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(s + i + 1)), m),
            _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(s + i + 5)), l));
        /* One test per 16 places for the usual case, neither a LF nor a key's m and l. */
        if (!_mm_movemask_epi8(_mm_or_si128(a, b)))
            continue;
        unsigned int lf = (unsigned int)_mm_movemask_epi8(a);
        unsigned int mask = (unsigned int)_mm_movemask_epi8(b);
        if (lf)  /* only places before the LF: a key holds no LF */
            mask &= (1u << __builtin_ctz(lf)) - 1;
        while (mask) {
            int bit = __builtin_ctz(mask);
            if (memcmp(s + i + bit, KEY, KEY_LEN) == 0)
                return -2;
            mask &= mask - 1;
        }
        if (lf)
            return i + __builtin_ctz(lf);
    }
#endif
    const char *q = memchr(s + i, '\n', (size_t)(n - i));
    if (q == NULL)
        return -1;
    if (key && find_key(s + i, q - s - i) >= 0)
        return -2;
    return q - s;
}

PyDoc_STRVAR(events_doc,
"events(data, count, plan) -> bytes | None\n\n"
"`event` over `count` events side by side (rechat.rewrite.SSEStreamRewriter._bulk,\n"
"rechat.modelmap.ModelRestore.feed_raw_events): when `data` (bytes) is exactly `count`\n"
"events that `event` would each take, maybe followed by the stream's last event\n"
"``data: [DONE]\\n\\n``, return `data` (`new` None) or the events with each head swapped\n"
"for `new`, that last event as it is; otherwise None (the caller takes them one by one).\n"
"The stops are looked for once over the events, the rest event by event. Raises TypeError\n"
"only for wrong arguments, MemoryError when out of memory.");

/* `events` over s[0:n] under `pl`: the bytes, a new reference to `data` when nothing is
   renamed, None (a new reference) when the events are not taken, NULL on error. */
static PyObject *
events_under(PyObject *data, const char *s, Py_ssize_t n, Py_ssize_t count, const Plan *pl)
{
    Py_ssize_t pos = 0, h = pl->h, done = 0;
    if (n >= DONE_LEN && memcmp(s + n - DONE_LEN, DONE, DONE_LEN) == 0) {
        n -= DONE_LEN;  /* the events before it */
        done = DONE_LEN;
    }
    /* The stops hold for the events as for each of them, so they are looked for once over
       them all; a stop that starts with a backslash only when they hold one (an event
       without any cannot hold it). */
    int slash = memchr(s, '\\', (size_t)n) != NULL;
    if (holds_any(s, n, pl->stops, slash))
        Py_RETURN_NONE;
    /* The tail stops: the key by line_end; when another can occur (those that start with a
       backslash only where there is one), all by holds_any (the key again: the rare case). */
    int key = 0, others = 0;
    for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(pl->tail); j++) {
        PyObject *stop = PyTuple_GET_ITEM(pl->tail, j);
        const char *p = PyBytes_AS_STRING(stop);
        Py_ssize_t m = PyBytes_GET_SIZE(stop);
        if (is_key(p, m))
            key = 1;
        else if (slash || m == 0 || p[0] != '\\')
            others = 1;
    }
    /* A head with a LF: each event would end inside it, as no event can (see takes). */
    if (memchr(pl->head, '\n', (size_t)h) != NULL)
        Py_RETURN_NONE;
    /* Each event: the head, then its first LF, which must be the first of its blank line,
       after the closing brace; no tail stop after the head. The ends of the first events
       are kept for the copy below. */
    Py_ssize_t ends[64];
    for (Py_ssize_t c = 0; c < count; c++) {
        if (n - pos < h + 3 || memcmp(s + pos, pl->head, (size_t)h) != 0)
            Py_RETURN_NONE;
        Py_ssize_t lf = line_end(s, pos + h, n, key);
        if (lf < pos + h + 1 || lf + 1 >= n || s[lf + 1] != '\n' || s[lf - 1] != '}')
            Py_RETURN_NONE;
        Py_ssize_t end = lf + 2;
        if (others && holds_any(s + pos + h, end - pos - h, pl->tail, slash))
            Py_RETURN_NONE;
        if (c < 64)
            ends[c] = end;
        pos = end;
    }
    if (pos != n)
        Py_RETURN_NONE;
    if (pl->new == NULL)
        return Py_NewRef(data);
    Py_ssize_t k = pl->k;
    PyObject *out = PyBytes_FromStringAndSize(NULL, n + done + count * (k - h));
    if (out == NULL)
        return NULL;
    char *o = PyBytes_AS_STRING(out);
    pos = 0;
    for (Py_ssize_t c = 0; c < count; c++) {
        Py_ssize_t end = c < 64 ? ends[c]
            : (const char *)memchr(s + pos + h, '\n', (size_t)(n - pos - h)) - s + 2;
        memcpy(o, pl->new, (size_t)k);
        memcpy(o + k, s + pos + h, (size_t)(end - pos - h));
        o += k + end - pos - h;
        pos = end;
    }
    memcpy(o, DONE, (size_t)done);
    return out;
}

static PyObject *
events(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t count;
    if (nargs != 3 || !PyLong_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "events() takes 3 arguments (data, count: int, plan)");
        return NULL;
    }
    count = PyLong_AsSsize_t(args[1]);
    if (count == -1 && PyErr_Occurred())
        return NULL;
    PyObject *data = args[0];
    Plan pl;
    if (count < 1 || !PyBytes_CheckExact(data) || !read_plan(args[2], &pl))
        Py_RETURN_NONE;
    return events_under(data, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), count, &pl);
}


PyDoc_STRVAR(locate_doc,
"locate(raw) -> (start, end, key) | None\n\n"
"The usual case of rechat.modelmap._locate, in one pass: `raw` (bytes) is a JSON object\n"
"without backslashes, holds ``\"model\"`` once, and only flat members come before it (the\n"
"opening brace is the one ``{}[]`` there, and an even number of quotes, so it is a key of\n"
"the top-level object); its value is a string, spelled ``: \"`` or ``:\"``. Returns the\n"
"indexes of the value's opening and closing quotes and of the key, as _locate does; None\n"
"when any of that does not hold (the caller then takes _locate's general path).");

/* The usual case of `locate` over s[0:n]: 1 with the indexes of the value's quotes and of
   the key in *v, *e, *i; 0 when it does not hold. */
static int
place(const char *s, Py_ssize_t n, Py_ssize_t *v, Py_ssize_t *e, Py_ssize_t *i)
{
    const Py_ssize_t k = KEY_LEN;
    if (n < k + 4 || s[0] != '{' || s[n - 1] != '}' || memchr(s, '\\', (size_t)n) != NULL)
        return 0;
    /* The key, once: none after it. */
    Py_ssize_t at = find_key(s, n);
    if (at < 1 || find_key(s + at + k, n - at - k) >= 0)
        return 0;
    /* Only flat members before it: no nesting but the opening brace, and quotes in pairs
       (without escapes a quote opens or closes a string), so the key is not in a string.
       (A loop without branches, which the compiler vectorizes.) */
    unsigned int quotes = 0, nested = 0;
    for (Py_ssize_t j = 1; j < at; j++) {
        unsigned char c = (unsigned char)s[j];
        quotes += c == '"';
        nested |= (c | 0x20) == '{' || (c | 0x20) == '}';  /* [ ] are { } without 0x20 */
    }
    if (nested || (quotes & 1))
        return 0;
    if (s[at + k] == ':' && s[at + k + 1] == ' ' && s[at + k + 2] == '"')
        *v = at + k + 2;
    else if (s[at + k] == ':' && s[at + k + 1] == '"')
        *v = at + k + 1;
    else
        return 0;
    const char *q = memchr(s + *v + 1, '"', (size_t)(n - *v - 1));
    if (q == NULL)
        return 0;
    *e = q - s;
    *i = at;
    return 1;
}

static PyObject *
locate(PyObject *module, PyObject *raw)
{
    if (!PyBytes_CheckExact(raw))
        Py_RETURN_NONE;
    Py_ssize_t at[3];
    if (!place(PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw), &at[0], &at[1], &at[2]))
        Py_RETURN_NONE;
    /* (A tuple built by hand: Py_BuildValue parses its format on every call.) */
    PyObject *out = PyTuple_New(3);
    if (out == NULL)
        return NULL;
    for (int j = 0; j < 3; j++) {
        PyObject *x = PyLong_FromSsize_t(at[j]);
        if (x == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, j, x);
    }
    return out;
}

PyDoc_STRVAR(learn_doc,
"learn(raw, asked) -> (head, new_head, cut) | None\n\n"
"rechat.modelmap.ModelRestore._learn's memo for a streamed chunk `raw` (bytes) of the usual\n"
"shape (as `locate` takes it): `head` is `raw` up to the model value's closing quote,\n"
"`new_head` the same with the value replaced by `asked` (the JSON string's bytes, quotes\n"
"included), or `head` itself when the value is `asked` already, and `cut` the index of the\n"
"key. None when `locate` would give None.");

/* `learn`'s memo for the chunk s[0:n]: its three parts as new references, 1; 0 when `place`
   does not take the chunk; -1 on error. */
static int
memo_of(const char *s, Py_ssize_t n, PyObject *asked, PyObject **head, PyObject **new,
        PyObject **cut)
{
    Py_ssize_t v, e, i, a = PyBytes_GET_SIZE(asked);
    if (!place(s, n, &v, &e, &i))
        return 0;
    *head = PyBytes_FromStringAndSize(s, e + 1);
    if (*head == NULL)
        return -1;
    if (e + 1 - v == a && memcmp(s + v, PyBytes_AS_STRING(asked), (size_t)a) == 0)
        *new = Py_NewRef(*head);
    else {
        *new = PyBytes_FromStringAndSize(NULL, v + a);
        if (*new == NULL) {
            Py_DECREF(*head);
            return -1;
        }
        memcpy(PyBytes_AS_STRING(*new), s, (size_t)v);
        memcpy(PyBytes_AS_STRING(*new) + v, PyBytes_AS_STRING(asked), (size_t)a);
    }
    *cut = PyLong_FromSsize_t(i);
    if (*cut == NULL) {
        Py_DECREF(*head);
        Py_DECREF(*new);
        return -1;
    }
    return 1;
}

static PyObject *
learn(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "learn() takes 2 arguments (raw, asked)");
        return NULL;
    }
    PyObject *raw = args[0], *asked = args[1], *head, *new, *cut;
    if (!PyBytes_CheckExact(raw) || !PyBytes_CheckExact(asked))
        Py_RETURN_NONE;
    int got = memo_of(PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw), asked, &head, &new, &cut);
    if (got <= 0)
        return got < 0 ? NULL : Py_NewRef(Py_None);
    PyObject *out = PyTuple_Pack(3, head, new, cut);
    Py_DECREF(head);
    Py_DECREF(new);
    Py_DECREF(cut);
    return out;
}

/* b"data: " + b, a new reference or NULL. */
static PyObject *
data_line(PyObject *b)
{
    PyObject *out = PyBytes_FromStringAndSize(NULL, 6 + PyBytes_GET_SIZE(b));
    if (out != NULL) {
        memcpy(PyBytes_AS_STRING(out), "data: ", 6);
        memcpy(PyBytes_AS_STRING(out) + 6, PyBytes_AS_STRING(b), (size_t)PyBytes_GET_SIZE(b));
    }
    return out;
}

PyDoc_STRVAR(learn_events_doc,
"learn_events(events, count, asked, tail) -> (out, memo, plan) | None\n\n"
"rechat.modelmap.ModelRestore.feed_raw_events for a stream's first piece, in one call: the\n"
"memo `learn` gives for the first event's JSON (`events` from its 7th byte to its first LF,\n"
"which must start its blank line), the plan for `events` made of it,\n"
"``((), b\"data: \" + head, None if new_head is head else b\"data: \" + new_head, tail)``,\n"
"and `out`, what `events(events, count, plan)` gives. None when the first event is not of\n"
"that shape or `learn` declines its JSON (the caller then takes its Python path). Raises\n"
"TypeError only for wrong arguments, MemoryError when out of memory.");

static PyObject *
learn_events(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyLong_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError,
                        "learn_events() takes 4 arguments (events, count: int, asked, tail)");
        return NULL;
    }
    Py_ssize_t count = PyLong_AsSsize_t(args[1]);
    if (count == -1 && PyErr_Occurred())
        return NULL;
    PyObject *data = args[0], *asked = args[2], *tail = args[3];
    if (!PyBytes_CheckExact(data) || !PyBytes_CheckExact(asked) || !bytes_tuple(tail))
        Py_RETURN_NONE;
    const char *s = PyBytes_AS_STRING(data);
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    const char *lf = memchr(s, '\n', (size_t)n);
    if (lf == NULL || lf - s < 6 || lf + 1 >= s + n || lf[1] != '\n')
        Py_RETURN_NONE;
    PyObject *head, *new, *cut;
    int got = memo_of(s + 6, lf - s - 6, asked, &head, &new, &cut);
    if (got <= 0)
        return got < 0 ? NULL : Py_NewRef(Py_None);
    PyObject *out = NULL, *memo = NULL, *plan = NULL, *stops = NULL;
    PyObject *line = data_line(head);
    PyObject *new_line = new == head ? Py_NewRef(Py_None) : data_line(new);
    if (line == NULL || new_line == NULL || (stops = PyTuple_New(0)) == NULL)
        goto done;
    plan = PyTuple_Pack(4, stops, line, new_line, tail);
    memo = PyTuple_Pack(3, head, new, cut);
    if (plan == NULL || memo == NULL)
        goto done;
    Plan pl = {stops, tail, PyBytes_AS_STRING(line),
               new_line == Py_None ? NULL : PyBytes_AS_STRING(new_line),
               PyBytes_GET_SIZE(line), new_line == Py_None ? 0 : PyBytes_GET_SIZE(new_line)};
    PyObject *renamed = count < 1 ? Py_NewRef(Py_None) : events_under(data, s, n, count, &pl);
    if (renamed != NULL) {
        out = PyTuple_Pack(3, renamed, memo, plan);
        Py_DECREF(renamed);
    }
done:
    Py_DECREF(head);
    Py_DECREF(new);
    Py_DECREF(cut);
    Py_XDECREF(line);
    Py_XDECREF(new_line);
    Py_XDECREF(stops);
    Py_XDECREF(memo);
    Py_XDECREF(plan);
    return out;
}

PyDoc_STRVAR(touches_doc,
"touches(data, stops, escape) -> bool | None\n\n"
"Whether a piece of a stream concerns the transform an SSE rewriter has set aside\n"
"(rechat.rewrite.SSEStreamRewriter.feed): `data` (bytes) holds one of `stops` (a tuple of\n"
"bytes), or `escape` is true and it holds ``\\\\u`` or ends with a backslash (a ``\\\\u``\n"
"split between pieces). None when `data` is not bytes or `stops` not a tuple of bytes (the\n"
"caller then tests in Python).");

static PyObject *
touches(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "touches() takes 3 arguments (data, stops, escape)");
        return NULL;
    }
    PyObject *data = args[0], *stops = args[1];
    if (!PyBytes_CheckExact(data) || !bytes_tuple(stops))
        Py_RETURN_NONE;
    int escape = PyObject_IsTrue(args[2]);
    if (escape < 0)
        return NULL;
    const char *s = PyBytes_AS_STRING(data);
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    if (holds_any(s, n, stops, 1))
        Py_RETURN_TRUE;
    if (escape && n > 0 && (s[n - 1] == '\\' || holds(s, n, "\\u", 2)))
        Py_RETURN_TRUE;
    Py_RETURN_FALSE;
}

PyDoc_STRVAR(swap_doc,
"swap(raw, renaming) -> bytes | None\n\n"
"The usual case of rechat.modelmap.rewrite_request_bytes for a decoded request, in one\n"
"pass: `raw` (bytes) holds ``\"model\"`` once and no backslash, and the bytes after that key\n"
"start with `old` or `old2`, where `renaming` is modelmap._RENAMES' entry\n"
"(served, old, new, old2, new2): return `raw` up to the key, then `new` (the key and the\n"
"served name), then the rest after `old` (or `old2`, with `new2`). None when any of that\n"
"does not hold (the caller then takes its Python path).");

static PyObject *
swap(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyTuple_CheckExact(args[1]) || PyTuple_GET_SIZE(args[1]) != 5) {
        PyErr_SetString(PyExc_TypeError, "swap() takes 2 arguments (raw, renaming: a 5-tuple)");
        return NULL;
    }
    PyObject *raw = args[0], *renaming = args[1];
    if (!PyBytes_CheckExact(raw))
        Py_RETURN_NONE;
    for (int j = 1; j < 5; j++)
        if (!PyBytes_CheckExact(PyTuple_GET_ITEM(renaming, j)))
            Py_RETURN_NONE;
    const char *s = PyBytes_AS_STRING(raw);
    Py_ssize_t n = PyBytes_GET_SIZE(raw);
    if (memchr(s, '\\', (size_t)n) != NULL)
        Py_RETURN_NONE;
    Py_ssize_t i = find_key(s, n);
    if (i < 0 || find_key(s + i + KEY_LEN, n - i - KEY_LEN) >= 0)
        Py_RETURN_NONE;
    Py_ssize_t after = i + KEY_LEN;
    for (int j = 1; j < 5; j += 2) {
        PyObject *old = PyTuple_GET_ITEM(renaming, j), *new = PyTuple_GET_ITEM(renaming, j + 1);
        Py_ssize_t m = PyBytes_GET_SIZE(old), k = PyBytes_GET_SIZE(new);
        if (n - after < m || memcmp(s + after, PyBytes_AS_STRING(old), (size_t)m) != 0)
            continue;
        PyObject *out = PyBytes_FromStringAndSize(NULL, i + k + n - after - m);
        if (out == NULL)
            return NULL;
        char *o = PyBytes_AS_STRING(out);
        memcpy(o, s, (size_t)i);
        memcpy(o + i, PyBytes_AS_STRING(new), (size_t)k);
        memcpy(o + i + k, s + after + m, (size_t)(n - after - m));
        return out;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"event", (PyCFunction)(void (*)(void))event, METH_FASTCALL, event_doc},
    {"events", (PyCFunction)(void (*)(void))events, METH_FASTCALL, events_doc},
    {"locate", locate, METH_O, locate_doc},
    {"swap", (PyCFunction)(void (*)(void))swap, METH_FASTCALL, swap_doc},
    {"learn", (PyCFunction)(void (*)(void))learn, METH_FASTCALL, learn_doc},
    {"learn_events", (PyCFunction)(void (*)(void))learn_events, METH_FASTCALL, learn_events_doc},
    {"touches", (PyCFunction)(void (*)(void))touches, METH_FASTCALL, touches_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "rechat._fused",
    "The gateway's hot byte tests in C (see rechat/speedups.py).",
    0, methods,
};

PyMODINIT_FUNC
PyInit__fused(void)
{
    return PyModuleDef_Init(&module);
}
