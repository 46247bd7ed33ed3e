/* The write at the end of a reactor turn, for many connections in one call: each
 * connection's Outbox (wschat/server/output.py) holds its queued frames and, while writing
 * to the socket directly is safe, its descriptor. Output._flush_all and Output.flush write
 * whatever this hands back, and everything when the module is not built.
 *
 * Why in C: a fan-out writes to every member, and in Python each write cost about a
 * microsecond of interpreter work around the system call (attribute lookups, the method
 * call, argument parsing, dropping and taking the GIL). Here the GIL is released once for
 * all the system calls of a turn, and several frames for one connection go out as one
 * sendmsg() over an iovec each, without joining them first.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <sys/socket.h>
#include <sys/uio.h>

#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

static PyObject *str_pending; /* "pending" */
static PyObject *str_fd;      /* "fd" */

typedef struct {
    PyObject *outbox;  /* strong reference */
    PyObject *pending; /* strong reference: keeps the buffers alive without the GIL */
    int fd;
    Py_ssize_t first_iov, iov_count, total, sent;
} Item;

/* Prepare one outbox: 1 if it is to be sent here, 0 if it is left to Python, -1 on error. */
typedef struct {
    struct iovec *iov;
    Py_ssize_t used, room;
} Iovecs;

/* Room for n more iovecs; items keep indices into the array, so it may move. */
static int reserve(Iovecs *v, Py_ssize_t n)
{
    if (v->used + n <= v->room) return 0;
    Py_ssize_t room = (v->used + n) * 2;
    struct iovec *iov = PyMem_Realloc(v->iov, (size_t)room * sizeof(struct iovec));
    if (iov == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    v->iov = iov;
    v->room = room;
    return 0;
}

static int take(PyObject *outbox, Item *item, Iovecs *v)
{
    PyObject *pending = PyObject_GetAttr(outbox, str_pending);
    if (pending == NULL) return -1;
    if (pending == Py_None) {
        Py_DECREF(pending);
        return 2; /* nothing queued: already flushed this turn */
    }
    PyObject *fd_obj = PyObject_GetAttr(outbox, str_fd);
    if (fd_obj == NULL) {
        Py_DECREF(pending);
        return -1;
    }
    long fd = PyLong_AsLong(fd_obj);
    Py_DECREF(fd_obj);
    if (fd == -1 && PyErr_Occurred()) {
        Py_DECREF(pending);
        return -1;
    }
    Py_ssize_t start = v->used, total = 0;
    if (fd < 0 || fd > INT_MAX) goto python;
    if (PyBytes_CheckExact(pending)) {
        if (reserve(v, 1) < 0) goto error;
        v->iov[start].iov_base = PyBytes_AS_STRING(pending);
        v->iov[start].iov_len = (size_t)PyBytes_GET_SIZE(pending);
        total = PyBytes_GET_SIZE(pending);
        v->used = start + 1;
    } else if (PyList_CheckExact(pending)) {
        /* More frames than one sendmsg() takes: Python joins them. */
        Py_ssize_t n = PyList_GET_SIZE(pending);
        if (n == 0 || n > IOV_MAX) goto python;
        if (reserve(v, n) < 0) goto error;
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *frame = PyList_GET_ITEM(pending, i);
            if (!PyBytes_CheckExact(frame)) goto python;
            v->iov[start + i].iov_base = PyBytes_AS_STRING(frame);
            v->iov[start + i].iov_len = (size_t)PyBytes_GET_SIZE(frame);
            total += PyBytes_GET_SIZE(frame);
        }
        v->used = start + n;
    } else {
        goto python;
    }
    /* Taken now, so that an outbox listed twice goes out once; put back if not all sent. */
    if (PyObject_SetAttr(outbox, str_pending, Py_None) < 0) goto error;
    Py_INCREF(outbox);
    item->outbox = outbox;
    item->pending = pending;
    item->fd = (int)fd;
    item->first_iov = start;
    item->iov_count = v->used - start;
    item->total = total;
    item->sent = 0;
    return 1;
python:
    Py_DECREF(pending);
    return 0;
error:
    Py_DECREF(pending);
    return -1;
}

static PyObject *leftover(PyObject *result, PyObject *outbox, Py_ssize_t sent)
{
    PyObject *pair = Py_BuildValue("(On)", outbox, sent);
    if (pair == NULL || PyList_Append(result, pair) < 0) {
        Py_XDECREF(pair);
        return NULL;
    }
    Py_DECREF(pair);
    return result;
}

PyDoc_STRVAR(flush_many_doc,
"flush_many(outboxes) -> list of (outbox, bytes sent)\n\n"
"Write each outbox's pending (bytes or a list of bytes) to its fd and set pending to\n"
"None. An outbox with nothing pending is skipped. One with fd < 0,\n"
"or whose socket did not take all of it (full, closed: errno is not looked at), comes back\n"
"with the number of bytes that did go out and pending untouched.");

static PyObject *flush_many(PyObject *module, PyObject *outboxes)
{
    if (!PyList_CheckExact(outboxes)) {
        PyErr_SetString(PyExc_TypeError, "flush_many() takes a list");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(outboxes);
    PyObject *result = PyList_New(0);
    if (result == NULL || n == 0) return result;

    /* `outboxes` is the factory's list of one turn, which only the reactor thread touches. */
    Item *items = PyMem_Calloc((size_t)n, sizeof(Item));
    Iovecs v = {NULL, 0, 0};
    if (items == NULL || reserve(&v, n) < 0) {
        PyMem_Free(items);
        PyMem_Free(v.iov);
        Py_DECREF(result);
        return PyErr_NoMemory();
    }
    Py_ssize_t count = 0;
    /* The attribute access in take() could run Python code that shortens the list. */
    for (Py_ssize_t i = 0; i < n && i < PyList_GET_SIZE(outboxes); i++) {
        PyObject *outbox = PyList_GET_ITEM(outboxes, i);
        Py_INCREF(outbox);
        int took = take(outbox, &items[count], &v);
        if (took < 0 || (took == 0 && leftover(result, outbox, 0) == NULL)) {
            Py_DECREF(outbox);
            goto error;
        }
        Py_DECREF(outbox);
        if (took == 1) count++;
    }

    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count; i++) {
        Item *it = &items[i];
        ssize_t r;
        if (it->iov_count == 1) {
            r = send(it->fd, v.iov[it->first_iov].iov_base, v.iov[it->first_iov].iov_len,
                     MSG_DONTWAIT | MSG_NOSIGNAL);
        } else {
            struct msghdr msg = {0};
            msg.msg_iov = &v.iov[it->first_iov];
            msg.msg_iovlen = (size_t)it->iov_count;
            r = sendmsg(it->fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
        }
        it->sent = r < 0 ? 0 : r;
    }
    Py_END_ALLOW_THREADS

    for (Py_ssize_t i = 0; i < count; i++) {
        Item *it = &items[i];
        if (it->sent != it->total &&
            (PyObject_SetAttr(it->outbox, str_pending, it->pending) < 0 ||
             leftover(result, it->outbox, it->sent) == NULL))
            goto error;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_DECREF(items[i].outbox);
        Py_DECREF(items[i].pending);
    }
    PyMem_Free(items);
    PyMem_Free(v.iov);
    return result;

error:
    /* Whatever did not go out at all is put back, so that an exception here loses no
     * message. A connection that took only part of its output cannot be put back (its
     * first bytes are on the wire, and the count that says so is lost): its socket is shut
     * down, Twisted sees the connection go, and the client reconnects and asks for what it
     * missed with `since`. After the sends only a failed allocation (or an outbox whose
     * attributes raise) gets here. */
    {
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        for (Py_ssize_t i = 0; i < count; i++) {
            Item *it = &items[i];
            if (it->sent > 0 && it->sent != it->total) {
                shutdown(it->fd, SHUT_RDWR);
                if (PyObject_SetAttr(it->outbox, str_pending, Py_None) < 0) PyErr_Clear();
            } else if (it->sent == 0 &&
                       PyObject_SetAttr(it->outbox, str_pending, it->pending) < 0) {
                PyErr_Clear();
            }
            Py_DECREF(it->outbox);
            Py_DECREF(it->pending);
        }
        PyErr_Restore(type, value, traceback);
    }
    PyMem_Free(items);
    PyMem_Free(v.iov);
    Py_DECREF(result);
    return NULL;
}

static PyMethodDef methods[] = {
    {"flush_many", flush_many, METH_O, flush_many_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "wschat._sendmany", "The fan-out write loop in C.", -1, methods,
};

PyMODINIT_FUNC PyInit__sendmany(void)
{
    str_pending = PyUnicode_InternFromString("pending");
    str_fd = PyUnicode_InternFromString("fd");
    if (str_pending == NULL || str_fd == NULL) return NULL;
    return PyModule_Create(&module_def);
}
