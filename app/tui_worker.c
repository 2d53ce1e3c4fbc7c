/* tui_worker: the explorer's engine thread, a command queue and a one-slot snapshot mailbox
 * (see tui_worker.h). */
#include "tui_worker.h"

#include <errno.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "eng_transform.h"
#include "tui_export.h"

typedef enum { JOB_PREFILL, JOB_PATTERN, JOB_E2E, JOB_EXPORT, JOB_SAVE, JOB_TRANSFORM } job_kind;

typedef struct {
    job_kind kind;
    int layer, head;
    eng_pattern pat;
    eng_view view;
    int overlay;
} job;

#define QCAP 64

struct tui_worker {
    eng_session *s;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;      /* work arrived / stop asked */
    pthread_cond_t done_cv; /* the thread ended */
    job q[QCAP];
    int qhead, qlen;
    eng_view view;
    int view_set, view_dirty;
    eng_snapshot *mailbox;  /* newest untaken snapshot */
    tui_status st;
    int stop, finished;
    volatile int cancel;    /* read by the session's prefills between layers (eng_session_set_cancel) */
    char out_dir[1024];
    char command[4096];
    unsigned export_seq;
};

static void set_msg(tui_worker *w, int error, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

static void set_msg(tui_worker *w, int error, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    pthread_mutex_lock(&w->mu);
    vsnprintf(w->st.msg, sizeof w->st.msg, fmt, ap);
    w->st.msg_error = error;
    w->st.msg_seq++;
    w->st.seq++;
    pthread_mutex_unlock(&w->mu);
    va_end(ap);
}

static void progress(void *ctx, const char *what, int done, int total) {
    tui_worker *w = ctx;
    pthread_mutex_lock(&w->mu);
    snprintf(w->st.what, sizeof w->st.what, "%s", what);
    w->st.done = done;
    w->st.total = total;
    w->st.seq++;
    pthread_mutex_unlock(&w->mu);
}

static void set_busy(tui_worker *w, int busy, const char *what) {
    pthread_mutex_lock(&w->mu);
    w->st.busy = busy;
    snprintf(w->st.what, sizeof w->st.what, "%s", what ? what : "");
    w->st.done = w->st.total = 0;
    w->st.seq++;
    pthread_mutex_unlock(&w->mu);
}

static void publish(tui_worker *w) {
    pthread_mutex_lock(&w->mu);
    eng_view v = w->view;
    int has_view = w->view_set;
    w->view_dirty = 0;
    pthread_mutex_unlock(&w->mu);
    eng_snapshot *snap = NULL;
    eng_err err;
    if (eng_session_snapshot(w->s, has_view ? &v : NULL, &snap, &err)) {
        set_msg(w, 1, "snapshot: %s", err.msg);
        return;
    }
    pthread_mutex_lock(&w->mu);
    eng_snapshot *old = w->mailbox;
    w->mailbox = snap;
    w->st.seq++;
    pthread_mutex_unlock(&w->mu);
    eng_snapshot_free(old);
}

/* The analysis prefill; 0 when it finished (the status is then ready). */
static int run_prefill(tui_worker *w) {
    eng_err err;
    set_busy(w, 1, "prefill");
    int rc = eng_session_prefill(w->s, progress, w, &err);
    set_busy(w, 0, NULL);
    if (rc && w->cancel) {
        set_msg(w, 0, "prefill cancelled");
    } else if (rc) {
        set_msg(w, 1, "prefill failed: %s", err.msg);
    } else {
        pthread_mutex_lock(&w->mu);
        w->st.ready = 1;
        pthread_mutex_unlock(&w->mu);
    }
    return rc;
}

static void run_job(tui_worker *w, const job *j) {
    eng_err err;
    switch (j->kind) {
    case JOB_PREFILL: run_prefill(w); break;
    case JOB_TRANSFORM: {
        /* swap the weights the session analyses and redo the analysis prefill on them */
        unsigned avail = 0, on = eng_session_transform(w->s, &avail);
        if (!avail) {
            set_msg(w, 1, "no weight transform: start with --transform 24|int8|24+int8");
            break;
        }
        if (eng_session_set_transform(w->s, !on, &err)) {
            set_msg(w, 1, "transform: %s", err.msg);
            break;
        }
        pthread_mutex_lock(&w->mu);
        w->st.ready = 0;
        pthread_mutex_unlock(&w->mu);
        if (!run_prefill(w))
            set_msg(w, 0, "weights: %s, re-analysed (r: end to end)", on ? "original" : eng_transform_name(avail));
        break;
    }
    case JOB_PATTERN: {
        set_busy(w, 1, "re-running the layer");
        int rc = eng_session_set_pattern(w->s, j->layer, j->head, &j->pat, &err);
        set_busy(w, 0, NULL);
        if (rc) {
            set_msg(w, 1, "pattern L%d H%d: %s", j->layer, j->head, err.msg);
        } else {
            char d[96];
            eng_pattern_describe(&j->pat, d, sizeof d);
            set_msg(w, 0, "L%d H%d -> %s: layer %d re-run", j->layer, j->head, d, j->layer);
        }
        break;
    }
    case JOB_E2E: {
        set_busy(w, 1, "end to end");
        int rc = eng_session_run_e2e(w->s, progress, w, &err);
        set_busy(w, 0, NULL);
        if (rc) set_msg(w, 1, "end to end: %s", err.msg);
        else set_msg(w, 0, "end-to-end numbers updated (dense and sparse prefill)");
        break;
    }
    case JOB_EXPORT: {
        char path[1200];
        snprintf(path, sizeof path, "%s/attnscope-L%d-H%d-%u.png", w->out_dir, j->view.layer, j->view.head,
                 ++w->export_seq);
        set_busy(w, 1, "exporting PNG");
        /* the engine snapshots the region at print resolution; app/ draws and writes the PNG */
        eng_view ev = tui_export_view(&j->view, eng_session_n_tokens(w->s), j->overlay);
        eng_snapshot *snap = NULL;
        int rc = eng_session_snapshot(w->s, &ev, &snap, &err);
        if (!rc) rc = tui_export_png(snap, j->overlay, w->command[0] ? w->command : NULL, path, NULL, NULL, &err);
        eng_snapshot_free(snap);
        set_busy(w, 0, NULL);
        if (rc) set_msg(w, 1, "export: %s", err.msg);
        else set_msg(w, 0, "exported PNG: %s", path);
        break;
    }
    case JOB_SAVE: {
        char mi[1200], nat[1200];
        snprintf(mi, sizeof mi, "%s/attnscope-patterns.minference.json", w->out_dir);
        snprintf(nat, sizeof nat, "%s/attnscope-patterns.json", w->out_dir);
        if (eng_session_save_patterns(w->s, mi, nat, &err)) set_msg(w, 1, "save: %s", err.msg);
        else set_msg(w, 0, "saved: %s and %s", nat, mi);
        break;
    }
    }
}

static void *thread_main(void *p) {
    tui_worker *w = p;
    publish(w); /* model, shape and backend for the header while the prefill runs */
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->stop && !w->qlen && !w->view_dirty) pthread_cond_wait(&w->cv, &w->mu);
        if (w->stop) break;
        job j;
        int have = 0;
        if (w->qlen) {
            j = w->q[w->qhead];
            w->qhead = (w->qhead + 1) % QCAP;
            w->qlen--;
            have = 1;
        }
        pthread_mutex_unlock(&w->mu);
        if (have) run_job(w, &j);
        /* a snapshot after every command, and for every view change (coalesced) */
        pthread_mutex_lock(&w->mu);
        if (w->stop) break;
        int more = w->qlen > 0;
        pthread_mutex_unlock(&w->mu);
        if (!more) publish(w);
        pthread_mutex_lock(&w->mu);
    }
    w->finished = 1;
    pthread_cond_broadcast(&w->done_cv);
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

static void push(tui_worker *w, const job *j) {
    pthread_mutex_lock(&w->mu);
    if (w->qlen < QCAP) {
        w->q[(w->qhead + w->qlen) % QCAP] = *j;
        w->qlen++;
    } else {
        snprintf(w->st.msg, sizeof w->st.msg, "busy: %d commands queued, this one was dropped", QCAP);
        w->st.msg_error = 1;
        w->st.msg_seq++;
        w->st.seq++;
    }
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

int tui_worker_start(tui_worker **out, eng_session *s, const char *out_dir, const char *command, eng_err *err) {
    *out = NULL;
    tui_worker *w = calloc(1, sizeof *w);
    if (!w) return eng_err_set(err, "worker: out of memory");
    w->s = s;
    eng_session_set_cancel(s, &w->cancel);
    snprintf(w->out_dir, sizeof w->out_dir, "%s", out_dir && *out_dir ? out_dir : ".");
    snprintf(w->command, sizeof w->command, "%s", command ? command : "");
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    pthread_cond_init(&w->done_cv, NULL);
    job j = {.kind = JOB_PREFILL};
    w->q[0] = j;
    w->qlen = 1;
    w->st.busy = 1;
    snprintf(w->st.what, sizeof w->st.what, "prefill");
    int rc = pthread_create(&w->thread, NULL, thread_main, w);
    if (rc) {
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->cv);
        pthread_cond_destroy(&w->done_cv);
        free(w);
        return eng_err_set(err, "worker: cannot start a thread: %s", strerror(rc));
    }
    *out = w;
    return 0;
}

int tui_worker_stop(tui_worker *w, int wait_ms) {
    if (!w) return 0;
    w->cancel = 1; /* a running prefill stops before its next layer */
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += wait_ms / 1000;
    until.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&w->mu);
    w->stop = 1;
    pthread_cond_signal(&w->cv);
    int rc = 0;
    while (!w->finished && (wait_ms < 0 || rc != ETIMEDOUT))
        rc = wait_ms < 0 ? pthread_cond_wait(&w->done_cv, &w->mu) : pthread_cond_timedwait(&w->done_cv, &w->mu, &until);
    int finished = w->finished;
    pthread_mutex_unlock(&w->mu);
    if (!finished) return 1; /* still running: the caller may wait again */
    pthread_join(w->thread, NULL);
    eng_snapshot_free(w->mailbox);
    eng_session_free(w->s);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    pthread_cond_destroy(&w->done_cv);
    free(w);
    return 0;
}

void tui_worker_view(tui_worker *w, const eng_view *v) {
    pthread_mutex_lock(&w->mu);
    w->view = *v;
    w->view_set = 1;
    w->view_dirty = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

void tui_worker_set_pattern(tui_worker *w, int layer, int head, const eng_pattern *p) {
    job j = {.kind = JOB_PATTERN, .layer = layer, .head = head, .pat = *p};
    push(w, &j);
}

void tui_worker_e2e(tui_worker *w) {
    job j = {.kind = JOB_E2E};
    push(w, &j);
}

void tui_worker_export(tui_worker *w, const eng_view *v, int overlay) {
    job j = {.kind = JOB_EXPORT, .view = *v, .overlay = overlay};
    push(w, &j);
}

void tui_worker_transform(tui_worker *w) {
    job j = {.kind = JOB_TRANSFORM};
    push(w, &j);
}

void tui_worker_save(tui_worker *w) {
    job j = {.kind = JOB_SAVE};
    push(w, &j);
}

eng_snapshot *tui_worker_take(tui_worker *w) {
    pthread_mutex_lock(&w->mu);
    eng_snapshot *s = w->mailbox;
    w->mailbox = NULL;
    pthread_mutex_unlock(&w->mu);
    return s;
}

void tui_worker_status(tui_worker *w, tui_status *st) {
    pthread_mutex_lock(&w->mu);
    *st = w->st;
    pthread_mutex_unlock(&w->mu);
}
