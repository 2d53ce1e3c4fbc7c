/* eng_err: formatting of library error messages (see eng_err.h). */
#include "eng_err.h"

#include <stdarg.h>
#include <stdio.h>

int eng_err_set(eng_err *err, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}
