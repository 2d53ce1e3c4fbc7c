/* cli_report: terminal rendering of the sparse-vs-dense report (eng_report.h) for `run
 * --patterns` and `search`: the per-layer table, the end-to-end line, and a progress callback. */
#ifndef CLI_REPORT_H
#define CLI_REPORT_H

#include <stdio.h>

#include "eng_report.h"

/* Per-layer table (density, recall, error, pattern mix), the model row, end-to-end numbers and
 * timings. */
void cli_report_print(FILE *f, const eng_report *r);
/* eng_report_opts.progress: "\r<stage> layer i/L" on stderr when it is a terminal; ctx unused. */
void cli_report_progress(void *ctx, const char *stage, int done, int total);

#endif
