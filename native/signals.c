/* Deferral of asynchronous signals. The engine's multi-step changes (a new block, the reserve,
 * freeing, compaction, the end of reorganize()) must not be torn by a KeyboardInterrupt
 * between two of their Python steps. Python runs a signal's handler between bytecodes of the
 * main thread, soon after the C-level handler has flagged it; a signal blocked in this thread
 * is not flagged but stays pending in the kernel, and is delivered (its handler run) once it
 * is unblocked. These calls block every asynchronous signal for a section and deliver what
 * arrived at its end. (A signal that another thread receives, one that has it unblocked, still
 * reaches the main thread's bytecodes: programs with threads that take signals get the
 * ordering guarantees of the engine, not this deferral.) */
#include "core.h"

#include <errno.h>
#include <signal.h>

typedef struct {
    sigset_t old;
} SigToken;

static void deferred_set(sigset_t *set) {
    sigfillset(set);
    /* synchronous faults cannot wait (a blocked one kills the process), nor these two */
    static const int keep[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT, SIGSYS, SIGKILL, SIGSTOP};
    for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++) sigdelset(set, keep[i]);
}

/* Run the handlers of signals already flagged, after an exception (t, v, tb) that was
 * already fetched (or none: NULLs). If handlers raise, the last exception is set with the
 * earlier ones as its context. 0, or -1 with an exception set. */
static int run_flagged_handlers_after(PyObject *t, PyObject *v, PyObject *tb) {
    if (t) PyErr_NormalizeException(&t, &v, &tb);
    for (;;) {
        if (PyErr_CheckSignals() == 0) { /* every flagged handler ran (blocked: no new flags) */
            if (!t) return 0;
            PyErr_Restore(t, v, tb);
            return -1;
        }
        PyObject *t2, *v2, *tb2;
        PyErr_Fetch(&t2, &v2, &tb2);
        PyErr_NormalizeException(&t2, &v2, &tb2);
        if (t) {
            if (v2 && v)
                PyException_SetContext(v2, v); /* steals v */
            else
                Py_XDECREF(v);
            Py_XDECREF(t);
            Py_XDECREF(tb);
        }
        t = t2;
        v = v2;
        tb = tb2;
    }
}

/* sigblock() -> token: block asynchronous signals in this thread. Handlers of signals that
 * were flagged before the block run first: if one raises, the mask is restored and the
 * exception propagates, so the section never starts. */
PyObject *mod_sigblock(PyObject *mod, PyObject *unused) {
    (void)mod;
    (void)unused;
    SigToken tok;
    sigset_t set;
    deferred_set(&set);
    int err = pthread_sigmask(SIG_BLOCK, &set, &tok.old);
    if (err) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (run_flagged_handlers_after(NULL, NULL, NULL) < 0) {
        pthread_sigmask(SIG_SETMASK, &tok.old, NULL);
        return NULL;
    }
    return PyBytes_FromStringAndSize((const char *)&tok, sizeof tok);
}

static int token_get(PyObject *arg, SigToken *tok) {
    if (!PyBytes_Check(arg) || PyBytes_GET_SIZE(arg) != (Py_ssize_t)sizeof *tok) {
        PyErr_SetString(PyExc_TypeError, "expected a token from sigblock()");
        return -1;
    }
    memcpy(tok, PyBytes_AS_STRING(arg), sizeof *tok);
    return 0;
}

/* sigunblock(token): restore the mask of sigblock(); the handlers of the signals that
 * arrived meanwhile run now (and may raise: the section is over by then). */
PyObject *mod_sigunblock(PyObject *mod, PyObject *arg) {
    (void)mod;
    SigToken tok;
    if (token_get(arg, &tok) < 0) return NULL;
    pthread_sigmask(SIG_SETMASK, &tok.old, NULL);
    if (PyErr_CheckSignals() < 0) return NULL;
    Py_RETURN_NONE;
}

/* sigpoll(token): between two whole steps of a long section: deliver what is pending (run
 * the handlers) and block again. Always returns with the signals blocked, so the caller
 * can wind its section down in order when a handler raised. */
PyObject *mod_sigpoll(PyObject *mod, PyObject *arg) {
    (void)mod;
    SigToken tok;
    if (token_get(arg, &tok) < 0) return NULL;
    sigset_t set, pending;
    deferred_set(&set);
    if (sigpending(&pending) == 0) {
        int any = 0;
        for (int s = 1; s < NSIG && !any; s++)
            any = sigismember(&pending, s) == 1 && sigismember(&set, s) == 1 && sigismember(&tok.old, s) == 0;
        if (!any) Py_RETURN_NONE;
    }
    pthread_sigmask(SIG_SETMASK, &tok.old, NULL);
    PyObject *t = NULL, *v = NULL, *tb = NULL;
    if (PyErr_CheckSignals() < 0) PyErr_Fetch(&t, &v, &tb);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    /* a signal flagged between the two masks: its handler runs now, not in the caller */
    if (run_flagged_handlers_after(t, v, tb) < 0) return NULL;
    Py_RETURN_NONE;
}
