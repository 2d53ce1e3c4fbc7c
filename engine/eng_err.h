/* eng_err: the one error type every library call fills. Library code never prints or exits;
 * it returns -1 (or NULL) and leaves a message naming the file, tensor or field at fault. */
#ifndef ENG_ERR_H
#define ENG_ERR_H

typedef struct {
    char msg[1024];
} eng_err;

/* printf-style; always returns -1 so callers can `return eng_err_set(err, ...)`. err may be NULL. */
int eng_err_set(eng_err *err, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

#endif
