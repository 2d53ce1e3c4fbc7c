/* tui_worker: the explorer's engine thread. It owns the session: runs the analysis prefill, then
 * executes commands (pattern edits, end-to-end runs, exports, saves) in order and, after each, a
 * snapshot for the newest view, published through a one-slot mailbox. The UI thread only sends
 * commands, reads the status and draws the newest snapshot. */
#ifndef TUI_WORKER_H
#define TUI_WORKER_H

#include "eng_err.h"
#include "eng_pattern.h"
#include "eng_session.h"

typedef struct tui_worker tui_worker;

typedef struct {
    int busy;             /* a job is running */
    char what[96];        /* the running job */
    int done, total;      /* its progress (total 0: unknown) */
    int ready;            /* the analysis prefill finished */
    char msg[600];        /* last result ("exported PNG: PATH") or error */
    int msg_error;        /* msg is an error */
    unsigned msg_seq;     /* increments with every new msg */
    unsigned seq;         /* increments with every status change */
} tui_status;

/* Start the thread on an opened session (the worker owns it from now on) and queue the analysis
 * prefill. out_dir receives exported PNGs and saved configs; command (may be NULL) is stored in
 * PNGs. */
int tui_worker_start(tui_worker **out, eng_session *s, const char *out_dir, const char *command, eng_err *err);

/* Ask the thread to stop, cancelling a running prefill or end-to-end run (it stops before its next
 * layer), and wait up to wait_ms for it (< 0: until it ends). When it ended, joins it, frees it and
 * the session and returns 0; on timeout returns 1 and frees nothing: call again to wait more. */
int tui_worker_stop(tui_worker *w, int wait_ms);

/* Commands; each returns at once. */
void tui_worker_view(tui_worker *w, const eng_view *v);   /* newest view (replaces a queued one) */
void tui_worker_set_pattern(tui_worker *w, int layer, int head, const eng_pattern *p);
void tui_worker_e2e(tui_worker *w);
void tui_worker_export(tui_worker *w, const eng_view *v, int overlay);
void tui_worker_save(tui_worker *w);
/* Toggle the session's weight transform (eng_session_set_transform) and redo the analysis prefill. */
void tui_worker_transform(tui_worker *w);

/* The newest snapshot not yet taken, or NULL; the caller frees it (eng_snapshot_free). */
eng_snapshot *tui_worker_take(tui_worker *w);
void tui_worker_status(tui_worker *w, tui_status *st);

#endif
