/* tests/test_yaml.c: lib/yaml.c, YAML into a tree that remembers lines. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/errors.h"
#include "lib/yaml.h"

static struct rp_ynode *parse_ok(const char *s)
{
    struct rp_ynode *root = NULL;
    int rv = rp_yaml_parse_str("t.yaml", s, strlen(s), &root);
    cr_assert_eq(rv, 0, "parse failed: %s", rp_errmsg());
    cr_assert_not_null(root);
    return root;
}

/* Parses @s, expects RP_EINVAL and exactly @msg. */
static void parse_fails(const char *s, const char *msg)
{
    struct rp_ynode *root = (void *)1;
    int rv = rp_yaml_parse_str("t.yaml", s, strlen(s), &root);
    cr_assert_eq(rv, RP_EINVAL, "expected RP_EINVAL for <%s>, got %d", s, rv);
    cr_assert_null(root);
    cr_assert_str_eq(rp_errmsg(), msg);
}

/* Parses @s, expects RP_EINVAL and a message starting with @prefix. */
static void parse_fails_prefix(const char *s, const char *prefix)
{
    struct rp_ynode *root = NULL;
    int rv = rp_yaml_parse_str("t.yaml", s, strlen(s), &root);
    cr_assert_eq(rv, RP_EINVAL, "expected RP_EINVAL for <%s>, got %d", s, rv);
    cr_assert_null(root);
    cr_assert(strncmp(rp_errmsg(), prefix, strlen(prefix)) == 0, "message '%s' lacks prefix '%s'",
              rp_errmsg(), prefix);
}

Test(yaml, map_seq_scalar_keep_lines_and_columns)
{
    struct rp_ynode *root = parse_ok("a: 1\n"
                                     "b:\n"
                                     "  - x\n"
                                     "  - 'y'\n"
                                     "c: {d: e}\n");
    cr_assert_eq(root->type, RP_Y_MAP);
    cr_assert_eq(root->n, 3);
    cr_assert_str_eq(root->keys[0], "a");
    cr_assert_eq(root->key_lines[0], 1);
    cr_assert_eq(root->key_lines[2], 5);

    const struct rp_ynode *a = rp_ynode_get(root, "a");
    cr_assert_eq(a->type, RP_Y_SCALAR);
    cr_assert_str_eq(a->value, "1");
    cr_assert_eq(a->line, 1);
    cr_assert_eq(a->col, 4);
    cr_assert(!a->quoted);

    const struct rp_ynode *b = rp_ynode_get(root, "b");
    cr_assert_eq(b->type, RP_Y_SEQ);
    cr_assert_eq(b->n, 2);
    cr_assert_null(b->keys);
    cr_assert_str_eq(b->vals[0]->value, "x");
    cr_assert_eq(b->vals[0]->line, 3);
    cr_assert_eq(b->vals[0]->col, 5);
    cr_assert(!b->vals[0]->quoted);
    cr_assert_str_eq(b->vals[1]->value, "y");
    cr_assert(b->vals[1]->quoted);

    const struct rp_ynode *c = rp_ynode_get(root, "c");
    cr_assert_eq(c->type, RP_Y_MAP);
    cr_assert_eq(c->line, 5);
    cr_assert_str_eq(rp_ynode_get(c, "d")->value, "e");

    cr_assert_null(rp_ynode_get(root, "zzz"));
    cr_assert_null(rp_ynode_get(a, "a"), "a scalar has no keys");
    cr_assert_null(rp_ynode_get(NULL, "a"));
    rp_ynode_free(root);
}

Test(yaml, quoted_flag_marks_strings_written_as_strings)
{
    struct rp_ynode *root = parse_ok("plain: yes\n"
                                     "single: 'yes'\n"
                                     "double: \"yes\"\n"
                                     "literal: |\n  yes\n"
                                     "folded: >\n  yes\n"
                                     "tagged: !!str yes\n"
                                     "bang: ! yes\n");
    cr_assert(!rp_ynode_get(root, "plain")->quoted);
    cr_assert(rp_ynode_get(root, "single")->quoted);
    cr_assert(rp_ynode_get(root, "double")->quoted);
    cr_assert(rp_ynode_get(root, "literal")->quoted);
    cr_assert_str_eq(rp_ynode_get(root, "literal")->value, "yes\n");
    cr_assert(rp_ynode_get(root, "folded")->quoted);
    cr_assert(rp_ynode_get(root, "tagged")->quoted);
    cr_assert_str_eq(rp_ynode_get(root, "tagged")->value, "yes");
    cr_assert(rp_ynode_get(root, "bang")->quoted);
    rp_ynode_free(root);
}

Test(yaml, null_is_unquoted_empty_tilde_or_null)
{
    struct rp_ynode *root = parse_ok("a:\nb: ~\nc: null\nd: ''\ne: 'null'\nf: NULL\ng: nil\n");
    cr_assert(rp_ynode_is_null(rp_ynode_get(root, "a")));
    cr_assert(rp_ynode_is_null(rp_ynode_get(root, "b")));
    cr_assert(rp_ynode_is_null(rp_ynode_get(root, "c")));
    cr_assert(!rp_ynode_is_null(rp_ynode_get(root, "d")));
    cr_assert(!rp_ynode_is_null(rp_ynode_get(root, "e")));
    cr_assert(rp_ynode_is_null(rp_ynode_get(root, "f")));
    cr_assert(!rp_ynode_is_null(rp_ynode_get(root, "g")));
    cr_assert(!rp_ynode_is_null(root));
    cr_assert(!rp_ynode_is_null(NULL));
    rp_ynode_free(root);
}

Test(yaml, empty_inputs_are_an_empty_map)
{
    const char *inputs[] = {"",        "\n\n",   "# only a comment\n", "---\n",
                            "--- ~\n", "null\n", "---\n...\n"};
    for (size_t i = 0; i < sizeof(inputs) / sizeof(inputs[0]); i++) {
        struct rp_ynode *root = parse_ok(inputs[i]);
        cr_assert_eq(root->type, RP_Y_MAP, "input %zu", i);
        cr_assert_eq(root->n, 0, "input %zu", i);
        rp_ynode_free(root);
    }
    struct rp_ynode *root = NULL;
    cr_assert_eq(rp_yaml_parse_str("t.yaml", NULL, 0, &root), 0);
    cr_assert_eq(root->type, RP_Y_MAP);
    rp_ynode_free(root);
}

Test(yaml, root_may_be_a_scalar_or_list)
{
    struct rp_ynode *root = parse_ok("hello\n");
    cr_assert_eq(root->type, RP_Y_SCALAR);
    cr_assert_str_eq(root->value, "hello");
    rp_ynode_free(root);
    root = parse_ok("- 1\n- 2\n");
    cr_assert_eq(root->type, RP_Y_SEQ);
    cr_assert_eq(root->n, 2);
    rp_ynode_free(root);
}

Test(yaml, input_without_trailing_nul_is_read_by_length)
{
    const char s[] = "a: 1\nb: 2\n";
    struct rp_ynode *root = NULL;
    /* Only "a: 1" is given. */
    cr_assert_eq(rp_yaml_parse_str("t.yaml", s, 4, &root), 0);
    cr_assert_eq(root->n, 1);
    cr_assert_str_eq(rp_ynode_get(root, "a")->value, "1");
    rp_ynode_free(root);
}

Test(yaml, anchors_and_aliases_are_refused)
{
    parse_fails("a: 1\nb: &x 2\nc: *x\n", "t.yaml:2: YAML anchors and aliases are not supported");
    parse_fails("a: 1\nb: &x {c: 1}\n", "t.yaml:2: YAML anchors and aliases are not supported");
    parse_fails("a: &x\n  - 1\n", "t.yaml:1: YAML anchors and aliases are not supported");
    parse_fails("a: 1\nb:\n  <<: *y\n", "t.yaml:3: YAML anchors and aliases are not supported");
}

Test(yaml, duplicate_keys_are_refused_with_both_lines)
{
    parse_fails("a: 1\nb: 2\na: 3\n", "t.yaml:3: duplicate key 'a' (first at line 1)");
    parse_fails("x:\n  a: 1\n  b: 2\n\n  b: 3\n", "t.yaml:5: duplicate key 'b' (first at line 3)");
    parse_fails("{a: 1, 'a': 2}", "t.yaml:1: duplicate key 'a' (first at line 1)");
    /* The same key in two different maps is fine. */
    struct rp_ynode *root = parse_ok("x: {a: 1}\ny: {a: 2}\n");
    rp_ynode_free(root);
}

Test(yaml, duplicate_key_found_in_a_large_map)
{
    /* 5000 keys: the duplicate index has to grow several times. */
    size_t cap = 5000 * 24 + 64, o = 0;
    char *s = malloc(cap);
    for (int i = 0; i < 5000; i++)
        o += (size_t)snprintf(s + o, cap - o, "key%d: %d\n", i, i);
    struct rp_ynode *root = parse_ok(s);
    cr_assert_eq(root->n, 5000);
    cr_assert_str_eq(rp_ynode_get(root, "key4999")->value, "4999");
    cr_assert_eq(rp_ynode_get(root, "key4999")->line, 5000);
    rp_ynode_free(root);

    snprintf(s + o, cap - o, "key1234: again\n");
    parse_fails(s, "t.yaml:5001: duplicate key 'key1234' (first at line 1235)");
    free(s);
}

Test(yaml, non_scalar_keys_are_refused)
{
    parse_fails("? [a, b]\n: 1\n",
                "t.yaml:1: map keys must be scalars, found a list used as a key");
    parse_fails("a: 1\n? {b: c}\n: 1\n",
                "t.yaml:2: map keys must be scalars, found a map used as a key");
}

static char *nested(int depth)
{
    char *s = malloc((size_t)depth * 2 + 2);
    for (int i = 0; i < depth; i++)
        s[i] = '[';
    for (int i = 0; i < depth; i++)
        s[depth + i] = ']';
    s[2 * depth] = '\n';
    s[2 * depth + 1] = '\0';
    return s;
}

Test(yaml, nesting_up_to_64_levels_is_accepted)
{
    char *s = nested(RP_YAML_MAX_DEPTH);
    struct rp_ynode *root = parse_ok(s);
    const struct rp_ynode *n = root;
    int depth = 1;
    while (n->n == 1)
        n = n->vals[0], depth++;
    cr_assert_eq(depth, RP_YAML_MAX_DEPTH);
    rp_ynode_free(root);
    free(s);
}

Test(yaml, nesting_deeper_than_64_levels_is_refused)
{
    char *s = nested(RP_YAML_MAX_DEPTH + 1);
    parse_fails(s, "t.yaml:1: maps and lists nested deeper than 64 levels are not supported");
    free(s);
    s = nested(10000);
    parse_fails_prefix(s, "t.yaml:1: maps and lists nested deeper than 64 levels");
    free(s);

    /* Block style, one level per line. */
    size_t cap = 70 * 140, o = 0;
    char *b = malloc(cap);
    for (int i = 0; i < 70; i++)
        o += (size_t)snprintf(b + o, cap - o, "%*sk%d:\n", i * 2, "", i);
    snprintf(b + o, cap - o, "%*sleaf: 1\n", 140, "");
    parse_fails(b, "t.yaml:65: maps and lists nested deeper than 64 levels are not supported");
    free(b);
}

Test(yaml, four_mib_is_accepted_and_one_byte_more_refused)
{
    size_t n = RP_YAML_MAX_BYTES;
    char *s = malloc(n + 2);
    memset(s, '#', n + 1);
    for (size_t i = 79; i < n + 1; i += 80)
        s[i] = '\n';
    s[n + 1] = '\0';

    struct rp_ynode *root = NULL;
    cr_assert_eq(rp_yaml_parse_str("t.yaml", s, n, &root), 0, "%s", rp_errmsg());
    rp_ynode_free(root);

    root = (void *)1;
    cr_assert_eq(rp_yaml_parse_str("t.yaml", s, n + 1, &root), RP_EINVAL);
    cr_assert_null(root);
    cr_assert_str_eq(rp_errmsg(),
                     "t.yaml: 4194305 bytes is larger than the 4 MiB limit for a YAML document");

    struct rp_ynode **docs = (void *)1;
    size_t n_docs = 7;
    cr_assert_eq(rp_yaml_parse_all("t.yaml", s, n + 1, &docs, &n_docs), RP_EINVAL);
    cr_assert_null(docs);
    cr_assert_eq(n_docs, 0);
    free(s);
}

Test(yaml, five_mib_file_is_refused)
{
    char path[] = "/tmp/rp-yaml-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    char line[1024];
    memset(line, 'x', sizeof(line) - 1);
    line[0] = '#';
    line[sizeof(line) - 1] = '\n';
    for (int i = 0; i < 5 * 1024; i++)
        cr_assert_eq(write(fd, line, sizeof(line)), (ssize_t)sizeof(line));
    close(fd);

    struct rp_ynode *root = (void *)1;
    int rv = rp_yaml_parse_file(path, &root);
    unlink(path);
    cr_assert_eq(rv, RP_EINVAL);
    cr_assert_null(root);
    char want[256];
    snprintf(want, sizeof(want), "%s: larger than the 4 MiB limit for a YAML document", path);
    cr_assert_str_eq(rp_errmsg(), want);
}

Test(yaml, file_is_parsed_with_its_path_in_messages)
{
    char path[] = "/tmp/rp-yaml-XXXXXX";
    int fd = mkstemp(path);
    const char *s = "a: 1\na: 2\n";
    cr_assert_eq(write(fd, s, strlen(s)), (ssize_t)strlen(s));
    close(fd);
    struct rp_ynode *root = NULL;
    int rv = rp_yaml_parse_file(path, &root);
    unlink(path);
    cr_assert_eq(rv, RP_EINVAL);
    char want[256];
    snprintf(want, sizeof(want), "%s:2: duplicate key 'a' (first at line 1)", path);
    cr_assert_str_eq(rp_errmsg(), want);
}

Test(yaml, missing_file_is_an_io_error)
{
    struct rp_ynode *root = (void *)1;
    cr_assert_eq(rp_yaml_parse_file("/nonexistent/raftport.yaml", &root), RP_EIO);
    cr_assert_null(root);
    cr_assert_str_eq(rp_errmsg(),
                     "/nonexistent/raftport.yaml: cannot open: No such file or directory");
    cr_assert_eq(rp_yaml_parse_file("/tmp", &root), RP_EIO);
    cr_assert_str_eq(rp_errmsg(), "/tmp: cannot read: Is a directory");
}

Test(yaml, syntax_errors_carry_line_and_column)
{
    /* Unclosed flow sequence: libyaml's own problem and context. */
    parse_fails("a: 1\nb: [1, 2\nc: 3\n",
                "t.yaml:3:2: did not find expected ',' or ']' while parsing a flow sequence at "
                "line 2");
    parse_fails("a: 1\n b: 2\n", "t.yaml:2:3: mapping values are not allowed in this context");
    parse_fails("a: 'open\n", "t.yaml:2:1: found unexpected end of stream while scanning a "
                              "quoted scalar at line 1");
}

Test(yaml, tab_indentation_is_refused_with_a_hint)
{
    struct rp_ynode *root = NULL;
    const char *s = "a:\n\tb: 1\n";
    cr_assert_eq(rp_yaml_parse_str("t.yaml", s, strlen(s), &root), RP_EINVAL);
    cr_assert_null(root);
    cr_assert(strncmp(rp_errmsg(), "t.yaml:2:1: ", 12) == 0, "%s", rp_errmsg());
    cr_assert(strstr(rp_errmsg(), "tabs") != NULL, "%s", rp_errmsg());
}

Test(yaml, invalid_utf8_and_control_characters_are_located)
{
    parse_fails("a: 1\nb: \xff\n", "t.yaml:2:4: invalid leading UTF-8 octet (byte 0xff)");
    parse_fails("a: 1\nb: x\x07y\n", "t.yaml:2:5: control characters are not allowed (byte 0x07)");
}

Test(yaml, nul_in_a_scalar_is_refused)
{
    parse_fails("a: 1\nb: \"x\\0y\"\n", "t.yaml:2: NUL characters in a scalar are not supported");
    parse_fails("\"k\\0\": 1\n", "t.yaml:1: NUL characters in a scalar are not supported");
}

Test(yaml, tags_other_than_str_are_refused)
{
    parse_fails("a: !!int 1\n", "t.yaml:1: YAML tag 'tag:yaml.org,2002:int' is not supported");
    parse_fails("a: !custom x\n", "t.yaml:1: YAML tag '!custom' is not supported");
    parse_fails("a: !!set {b: c}\n", "t.yaml:1: YAML tag 'tag:yaml.org,2002:set' is not supported");
    struct rp_ynode *root = parse_ok("a: !!map {b: c}\nd: !!seq [e]\n");
    rp_ynode_free(root);
}

Test(yaml, second_document_is_refused_by_parse_str)
{
    parse_fails("a: 1\n---\nb: 2\n",
                "t.yaml:2: found a second YAML document ('---'); only one is expected here");
    /* A leading "---" before the only document is fine. */
    struct rp_ynode *root = parse_ok("---\na: 1\n...\n");
    cr_assert_str_eq(rp_ynode_get(root, "a")->value, "1");
    rp_ynode_free(root);
}

Test(yaml, parse_all_returns_every_document)
{
    const char *s = "kind: role\nname: a\n"
                    "---\n"
                    "kind: user\n"
                    "---\n"
                    "---\n"
                    "- 1\n";
    struct rp_ynode **docs = NULL;
    size_t n = 0;
    cr_assert_eq(rp_yaml_parse_all("t.yaml", s, strlen(s), &docs, &n), 0, "%s", rp_errmsg());
    cr_assert_eq(n, 4);
    cr_assert_str_eq(rp_ynode_get(docs[0], "kind")->value, "role");
    cr_assert_eq(rp_ynode_get(docs[1], "kind")->line, 4);
    cr_assert_eq(docs[2]->type, RP_Y_MAP, "an empty document is an empty map");
    cr_assert_eq(docs[2]->n, 0);
    cr_assert_eq(docs[3]->type, RP_Y_SEQ);
    rp_yaml_docs_free(docs, n);
}

Test(yaml, parse_all_of_nothing_is_zero_documents)
{
    struct rp_ynode **docs = (void *)1;
    size_t n = 9;
    cr_assert_eq(rp_yaml_parse_all("t.yaml", "# nothing\n", 10, &docs, &n), 0);
    cr_assert_eq(n, 0);
    cr_assert_null(docs);
    rp_yaml_docs_free(docs, n);
}

Test(yaml, parse_all_error_in_a_later_document_returns_nothing)
{
    const char *s = "a: 1\n---\nb: {c: 1}\n---\nd: 1\nd: 2\n";
    struct rp_ynode **docs = (void *)1;
    size_t n = 9;
    cr_assert_eq(rp_yaml_parse_all("t.yaml", s, strlen(s), &docs, &n), RP_EINVAL);
    cr_assert_null(docs);
    cr_assert_eq(n, 0);
    cr_assert_str_eq(rp_errmsg(), "t.yaml:6: duplicate key 'd' (first at line 5)");
}

Test(yaml, excerpt_escapes_and_cuts)
{
    char out[300];
    rp_yaml_excerpt("plain", out, sizeof(out));
    cr_assert_str_eq(out, "plain");
    rp_yaml_excerpt("a\nb\x1b[31m\xc3\xa9", out, sizeof(out));
    cr_assert_str_eq(out, "a\\x0ab\\x1b[31m\\xc3\\xa9");
    char big[200];
    memset(big, 'z', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    rp_yaml_excerpt(big, out, sizeof(out));
    cr_assert_eq(strlen(out), 100 + 3);
    cr_assert_str_eq(out + 100, "...");
    char small[8];
    rp_yaml_excerpt("abcdefghij", small, sizeof(small));
    cr_assert_str_eq(small, "abcd...");
}
