/* test_tui_e2e: the real explorer binary driven in tmux by tests/tui_e2e.sh (heads, pattern edit with
 * changing numbers, end to end, PNG export, help, teach, jump, resize, q and Ctrl-C with the terminal
 * restored, also during the prefill, which is cancelled); the exported PNG is then decoded with libpng
 * here. Skips when tmux is missing. */
#include "test_util.h"

#include <png.h>
#include <stdlib.h>
#include <unistd.h>

static void test_tui_in_tmux(void **state) {
    (void)state;
    if (system("command -v tmux >/dev/null 2>&1") != 0) skip();
    char dir[] = "/tmp/attnscope-tui-e2e-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "tests/tui_e2e.sh '%s' '%s'", tu_bin(), dir);
    int rc = system(cmd);
    assert_true(WIFEXITED(rc));
    if (WEXITSTATUS(rc) == 77) skip();
    assert_int_equal(WEXITSTATUS(rc), 0);

    /* the PNG the footer named: decode it fully and check its shape and provenance */
    char pp[1100], path[1024] = "";
    snprintf(pp, sizeof pp, "%s/png_path", dir);
    FILE *f = fopen(pp, "r");
    assert_non_null(f);
    assert_non_null(fgets(path, sizeof path, f));
    fclose(f);
    path[strcspn(path, "\n")] = 0;
    FILE *pf = fopen(path, "rb");
    assert_non_null(pf);
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    assert_non_null(png);
    assert_non_null(info);
    if (setjmp(png_jmpbuf(png))) fail_msg("libpng could not decode %s", path);
    png_init_io(png, pf);
    png_read_png(png, info, PNG_TRANSFORM_IDENTITY, NULL);
    png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    assert_true(w >= 256 && h >= 256);
    assert_int_equal(png_get_bit_depth(png, info), 8);
    /* not a blank canvas: the heatmap has many distinct colours */
    png_bytepp rows = png_get_rows(png, info);
    int ch = png_get_channels(png, info), distinct = 0;
    unsigned prev = ~0u;
    for (png_uint_32 x = 0; x < w; x++) {
        png_bytep p = rows[h / 2] + x * ch;
        unsigned c = (unsigned)p[0] << 16 | (unsigned)p[1] << 8 | p[2];
        distinct += c != prev;
        prev = c;
    }
    assert_true(distinct > 10);
    png_textp text = NULL;
    int nt = png_get_text(png, info, &text, NULL), has_cmd = 0;
    for (int i = 0; i < nt; i++)
        if (!strcmp(text[i].key, "Command") && strstr(text[i].text, "tui")) has_cmd = 1;
    assert_true(has_cmd);
    png_destroy_read_struct(&png, &info, NULL);
    fclose(pf);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_tui_in_tmux)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
