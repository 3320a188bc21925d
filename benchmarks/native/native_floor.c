/* The floor pass of benchmarks/script_cost.py as module commands in C, three ways, to tell how
 * much of a pass is the script interpreter and how much the commands and their replication:
 *   rqfloor.{enqueue,dequeue,ack}: the Lua floor's commands, each through RedisModule_Call and
 *     replicated as effects, as a script's redis.call is;
 *   rqfloor.*_keys: each per-message command's effect made on the key itself (the key API) and
 *     replicated as that command (RedisModule_Replicate);
 *   rqfloor.*_verbatim: as *_keys, but nothing replicated per write: the module command itself
 *     is, once per call, and the replica runs it (it must load the module too).
 * tests/test_script_cost_floors.py checks that each leaves on the primary and its replica what
 * the Lua floor leaves. Not a queue: nothing is checked, every body gets the same fingerprint,
 * and *_verbatim is deterministic only because the floor keeps whole seconds (a real one would
 * replicate its time as an argument). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "module_api.h"

/* Effects (each write replicated as a command) or, while a *_verbatim command runs, nothing per
 * write: the command itself is replicated once at its end. */
static int verbatim = 0;

/* A growing list of strings for one variadic command (ZADD, ZREM...). */
typedef struct {
    RedisModuleString **items;
    size_t len, cap;
} Args;

static void args_push(RedisModuleCtx *ctx, Args *a, const char *p, size_t len) {
    if (a->len == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 64;
        a->items = RedisModule_Realloc(a->items, a->cap * sizeof(*a->items));
    }
    a->items[a->len++] = RedisModule_CreateString(ctx, p, len);
}

static void args_push_ll(RedisModuleCtx *ctx, Args *a, long long v) {
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%lld", v);
    args_push(ctx, a, buf, (size_t)n);
}

static void args_free(RedisModuleCtx *ctx, Args *a) {
    for (size_t i = 0; i < a->len; i++) RedisModule_FreeString(ctx, a->items[i]);
    RedisModule_Free(a->items);
}

static void free_strings(RedisModuleCtx *ctx, RedisModuleString **items, int count) {
    for (int i = 0; i < count; i++)
        if (items[i]) RedisModule_FreeString(ctx, items[i]);
}

static void call_free(RedisModuleCallReply *r) {
    if (r) RedisModule_FreeCallReply(r);
}

/* A write made once per call (a counter, the zsets), through a command call. */
static RedisModuleCallReply *write_call(RedisModuleCtx *ctx, const char *cmd, const char *fmt,
                                        const char *key, long long value) {
    return RedisModule_Call(ctx, cmd, verbatim ? fmt + 1 : fmt, key, value); /* without "!" */
}

/* `key` with its variadic arguments, skipped when there are none. */
static void call_variadic(RedisModuleCtx *ctx, const char *cmd, const char *key, Args *a) {
    if (a->len == 0) return;
    RedisModuleString **argv = RedisModule_Alloc((a->len + 1) * sizeof(*argv));
    argv[0] = RedisModule_CreateString(ctx, key, strlen(key));
    memcpy(argv + 1, a->items, a->len * sizeof(*argv));
    call_free(RedisModule_Call(ctx, cmd, verbatim ? "v" : "!v", argv, a->len + 1));
    RedisModule_FreeString(ctx, argv[0]);
    RedisModule_Free(argv);
}

/* Splits `p` (up to `end`) at the first `count` occurrences of `sep`: fields[i], lens[i]. */
static int split(const char *p, const char *end, char sep, int count, const char **fields,
                 size_t *lens) {
    for (int i = 0; i < count; i++) {
        const char *at = memchr(p, sep, (size_t)(end - p));
        if (!at) return 0;
        fields[i] = p;
        lens[i] = (size_t)(at - p);
        p = at + 1;
    }
    fields[count] = p;
    lens[count] = (size_t)(end - p);
    return 1;
}

static long long now_ms(RedisModuleCtx *ctx) {
    RedisModuleCallReply *t = RedisModule_Call(ctx, "TIME", "");
    size_t len;
    const char *s = RedisModule_CallReplyStringPtr(RedisModule_CallReplyArrayElement(t, 0), &len);
    long long seconds = strtoll(s, NULL, 10);
    call_free(t);
    return seconds * 1000;
}

/* A number's two keys, as text. */
typedef struct {
    const char *number;
    size_t nlen;
    char key[256], qkey[256];
    int klen, qlen;
} NumberKeys;

static int number_keys(NumberKeys *k, const char *number, size_t nlen) {
    if (nlen > 200) return 0;
    k->number = number;
    k->nlen = nlen;
    k->klen = snprintf(k->key, sizeof k->key, "rq:v2:n:%.*s", (int)nlen, number);
    k->qlen = snprintf(k->qkey, sizeof k->qkey, "rq:v2:q:%.*s", (int)nlen, number);
    return 1;
}

/* One enqueue line, `number|rate|segments|id|body`, with its queue entry and id field. */
typedef struct {
    NumberKeys keys;
    char field[256];
    char *entry;
    size_t entry_cap;
    int elen;
} Message;

static int next_message(const char **p, const char *end, Message *m) {
    const char *eol = memchr(*p, '\n', (size_t)(end - *p));
    if (!eol) eol = end;
    const char *f[5];
    size_t fl[5];
    int ok = split(*p, eol, '|', 4, f, fl);
    *p = eol + 1;
    if (!ok || fl[3] > 200 || !number_keys(&m->keys, f[0], fl[0])) return 0;
    snprintf(m->field, sizeof m->field, "@%.*s", (int)fl[3], f[3]);
    size_t need = fl[2] + fl[3] + fl[4] + 8;
    if (need > m->entry_cap) {
        m->entry_cap = need * 2;
        m->entry = RedisModule_Realloc(m->entry, m->entry_cap);
    }
    m->elen = snprintf(m->entry, m->entry_cap, "0|%.*s|%.*s|%.*s", (int)fl[2], f[2], (int)fl[3],
                       f[3], (int)fl[4], f[4]);
    return 1;
}

/* Per message: read the number's state and the id's entry, append, write the id and the count.
 * Returns the queue's length after the append. */
typedef long long (*EnqueueOne)(RedisModuleCtx *ctx, Message *m, long long n);

static long long enqueue_by_calls(RedisModuleCtx *ctx, Message *m, long long n) {
    NumberKeys *k = &m->keys;
    size_t flen = strlen(m->field);
    call_free(RedisModule_Call(ctx, "HMGET", "bcccb", k->key, (size_t)k->klen, "r", "s", "t",
                               m->field, flen));
    RedisModuleCallReply *pushed = RedisModule_Call(ctx, "RPUSH", "!bb", k->qkey,
                                                    (size_t)k->qlen, m->entry, (size_t)m->elen);
    long long length = RedisModule_CallReplyInteger(pushed);
    call_free(pushed);
    call_free(RedisModule_Call(ctx, "HSET", "!bbccl", k->key, (size_t)k->klen, m->field, flen,
                               "abcdef0123456789", "s", n));
    return length;
}

static long long enqueue_on_keys(RedisModuleCtx *ctx, Message *m, long long n) {
    NumberKeys *k = &m->keys;
    RedisModuleString *hname = RedisModule_CreateString(ctx, k->key, (size_t)k->klen);
    RedisModuleString *qname = RedisModule_CreateString(ctx, k->qkey, (size_t)k->qlen);
    RedisModuleKey *h = RedisModule_OpenKey(ctx, hname, RM_KEY_READ | RM_KEY_WRITE);
    RedisModuleString *got[4] = {0};
    RedisModule_HashGet(h, RM_HASH_CFIELDS, "r", &got[0], "s", &got[1], "t", &got[2], m->field,
                        &got[3], NULL);
    free_strings(ctx, got, 4);
    RedisModuleKey *q = RedisModule_OpenKey(ctx, qname, RM_KEY_READ | RM_KEY_WRITE);
    RedisModuleString *value = RedisModule_CreateString(ctx, m->entry, (size_t)m->elen);
    RedisModule_ListPush(q, RM_LIST_TAIL, value);
    if (!verbatim) RedisModule_Replicate(ctx, "RPUSH", "ss", qname, value);
    long long length = (long long)RedisModule_ValueLength(q);
    RedisModule_CloseKey(q);
    RedisModuleString *print = RedisModule_CreateString(ctx, "abcdef0123456789", 16);
    RedisModuleString *held = RedisModule_CreateStringFromLongLong(ctx, n);
    RedisModule_HashSet(h, RM_HASH_CFIELDS, m->field, print, "s", held, NULL);
    if (!verbatim) RedisModule_Replicate(ctx, "HSET", "scscs", hname, m->field, print, "s", held);
    RedisModule_CloseKey(h);
    RedisModuleString *done[5] = {hname, qname, value, print, held};
    free_strings(ctx, done, 5);
    return length;
}

/* ARGV as the enqueue script's: epoch, window, max seconds, max segments, lines. */
static int enqueue(RedisModuleCtx *ctx, RedisModuleString **argv, int argc, EnqueueOne one) {
    if (argc != 6) return RedisModule_WrongArity(ctx);
    size_t blen;
    const char *p = RedisModule_StringPtrLen(argv[5], &blen), *end = p + blen;
    Args ready = {0};
    Message m = {0};
    long long n = 0;
    while (p < end) {
        if (!next_message(&p, end, &m)) continue;
        n++;
        if (one(ctx, &m, n) == 1) {
            args_push(ctx, &ready, "0", 1);
            args_push(ctx, &ready, m.keys.number, m.keys.nlen);
        }
    }
    call_variadic(ctx, "ZADD", "rq:v2:ready", &ready);
    args_free(ctx, &ready);
    RedisModule_Free(m.entry);
    call_free(write_call(ctx, "INCRBY", "!cl", "rq:barrier", 1));
    return RedisModule_ReplyWithLongLong(ctx, n);
}

/* Per due number: read its state, pop its head, keep the entry under lease `seq` with the
 * number's new time. Returns the popped entry (freed by the caller) or NULL. */
typedef RedisModuleString *(*LeaseOne)(RedisModuleCtx *ctx, NumberKeys *k, long long now,
                                       const char *seq);

static RedisModuleString *lease_by_calls(RedisModuleCtx *ctx, NumberKeys *k, long long now,
                                         const char *seq) {
    call_free(RedisModule_Call(ctx, "HMGET", "bcc", k->key, (size_t)k->klen, "r", "t"));
    RedisModuleCallReply *popped = RedisModule_Call(ctx, "LPOP", "!b", k->qkey, (size_t)k->qlen);
    RedisModuleString *entry = NULL;
    if (RedisModule_CallReplyType(popped) == RM_REPLY_STRING) {
        size_t elen;
        const char *text = RedisModule_CallReplyStringPtr(popped, &elen);
        entry = RedisModule_CreateString(ctx, text, elen);
        call_free(RedisModule_Call(ctx, "HSET", "!bclcs", k->key, (size_t)k->klen, "t", now, seq,
                                   entry));
    }
    call_free(popped);
    return entry;
}

static RedisModuleString *lease_on_keys(RedisModuleCtx *ctx, NumberKeys *k, long long now,
                                        const char *seq) {
    RedisModuleString *hname = RedisModule_CreateString(ctx, k->key, (size_t)k->klen);
    RedisModuleString *qname = RedisModule_CreateString(ctx, k->qkey, (size_t)k->qlen);
    RedisModuleKey *h = RedisModule_OpenKey(ctx, hname, RM_KEY_READ | RM_KEY_WRITE);
    RedisModuleString *got[2] = {0};
    RedisModule_HashGet(h, RM_HASH_CFIELDS, "r", &got[0], "t", &got[1], NULL);
    free_strings(ctx, got, 2);
    RedisModuleKey *q = RedisModule_OpenKey(ctx, qname, RM_KEY_READ | RM_KEY_WRITE);
    RedisModuleString *entry = RedisModule_ListPop(q, RM_LIST_HEAD);
    RedisModule_CloseKey(q);
    if (entry) {
        if (!verbatim) RedisModule_Replicate(ctx, "LPOP", "s", qname);
        RedisModuleString *now_text = RedisModule_CreateStringFromLongLong(ctx, now);
        RedisModule_HashSet(h, RM_HASH_CFIELDS, "t", now_text, seq, entry, NULL);
        if (!verbatim)
            RedisModule_Replicate(ctx, "HSET", "scscs", hname, "t", now_text, seq, entry);
        RedisModule_FreeString(ctx, now_text);
    }
    RedisModule_CloseKey(h);
    RedisModuleString *done[2] = {hname, qname};
    free_strings(ctx, done, 2);
    return entry;
}

/* ARGV: max, lease_ms, requeue_limit. Replies {now, five items per lease}. */
static int dequeue(RedisModuleCtx *ctx, RedisModuleString **argv, int argc, LeaseOne one) {
    if (argc != 4) return RedisModule_WrongArity(ctx);
    long long max = strtoll(RedisModule_StringPtrLen(argv[1], NULL), NULL, 10);
    long long now = now_ms(ctx);
    RedisModuleCallReply *due = RedisModule_Call(ctx, "ZRANGE", "ccl", "rq:v2:ready", "0", max - 1);
    size_t count = RedisModule_CallReplyLength(due);
    RedisModuleCallReply *counter =
        write_call(ctx, "INCRBY", "!cl", "rq:lease_seq", (long long)count);
    long long seq = RedisModule_CallReplyInteger(counter) - (long long)count;
    call_free(counter);
    Args leases = {0}, later = {0}, gone = {0};
    char lease[512], seq_text[32];
    RedisModule_ReplyWithArray(ctx, 2);
    RedisModule_ReplyWithLongLong(ctx, now);
    RedisModule_ReplyWithArray(ctx, RM_POSTPONED_LEN);
    long replied = 0;
    for (size_t i = 0; i < count; i++) {
        size_t nlen;
        const char *number =
            RedisModule_CallReplyStringPtr(RedisModule_CallReplyArrayElement(due, i), &nlen);
        NumberKeys k;
        if (!number_keys(&k, number, nlen)) continue;
        snprintf(seq_text, sizeof seq_text, "%lld", seq + 1);
        RedisModuleString *entry = one(ctx, &k, now, seq_text);
        if (!entry) {
            args_push(ctx, &gone, number, nlen);
            continue;
        }
        seq++;
        size_t elen;
        const char *text = RedisModule_StringPtrLen(entry, &elen);
        const char *f[4];
        size_t fl[4];
        split(text, text + elen, '|', 3, f, fl);
        int llen = snprintf(lease, sizeof lease, "%lld:%.*s/%.*s", seq, (int)nlen, number,
                            (int)fl[2], f[2]);
        args_push_ll(ctx, &leases, now + 600000);
        args_push(ctx, &leases, lease, (size_t)llen);
        args_push_ll(ctx, &later, seq);
        args_push(ctx, &later, number, nlen);
        RedisModule_ReplyWithStringBuffer(ctx, lease, (size_t)llen);
        RedisModule_ReplyWithStringBuffer(ctx, f[2], fl[2]);
        RedisModule_ReplyWithStringBuffer(ctx, number, nlen);
        RedisModule_ReplyWithStringBuffer(ctx, "0", 1);
        RedisModule_ReplyWithStringBuffer(ctx, text, elen);
        replied += 5;
        RedisModule_FreeString(ctx, entry);
    }
    RedisModule_ReplySetArrayLength(ctx, replied);
    call_variadic(ctx, "ZADD", "rq:v2:leases", &leases);
    call_variadic(ctx, "ZADD", "rq:v2:ready", &later);
    call_variadic(ctx, "ZREM", "rq:v2:ready", &gone);
    args_free(ctx, &leases);
    args_free(ctx, &later);
    args_free(ctx, &gone);
    call_free(due);
    return RM_OK;
}

/* Per acknowledged lease: read its entry, drop it and the id's entry, lower the count. */
typedef void (*AckOne)(RedisModuleCtx *ctx, NumberKeys *k, const char *seq, const char *field);

static void ack_by_calls(RedisModuleCtx *ctx, NumberKeys *k, const char *seq, const char *field) {
    call_free(RedisModule_Call(ctx, "HMGET", "bc", k->key, (size_t)k->klen, seq));
    call_free(RedisModule_Call(ctx, "HDEL", "!bcc", k->key, (size_t)k->klen, seq, field));
    call_free(RedisModule_Call(ctx, "HINCRBY", "!bcl", k->key, (size_t)k->klen, "s", -1LL));
}

static void ack_on_keys(RedisModuleCtx *ctx, NumberKeys *k, const char *seq, const char *field) {
    RedisModuleString *hname = RedisModule_CreateString(ctx, k->key, (size_t)k->klen);
    RedisModuleKey *h = RedisModule_OpenKey(ctx, hname, RM_KEY_READ | RM_KEY_WRITE);
    RedisModuleString *got[2] = {0};
    RedisModule_HashGet(h, RM_HASH_CFIELDS, seq, &got[0], "s", &got[1], NULL);
    long long held = 0;
    if (got[1]) RedisModule_StringToLongLong(got[1], &held);
    free_strings(ctx, got, 2);
    RedisModule_HashSet(h, RM_HASH_CFIELDS, seq, RM_HASH_DELETE, field, RM_HASH_DELETE, NULL);
    if (!verbatim) RedisModule_Replicate(ctx, "HDEL", "scc", hname, seq, field);
    RedisModuleString *left = RedisModule_CreateStringFromLongLong(ctx, held - 1);
    RedisModule_HashSet(h, RM_HASH_CFIELDS, "s", left, NULL);
    if (!verbatim) RedisModule_Replicate(ctx, "HINCRBY", "scl", hname, "s", -1LL);
    RedisModule_CloseKey(h);
    RedisModuleString *done[2] = {hname, left};
    free_strings(ctx, done, 2);
}

/* ARGV: leases ("seq:N/id") separated by spaces, window. */
static int ack(RedisModuleCtx *ctx, RedisModuleString **argv, int argc, AckOne one) {
    if (argc != 3) return RedisModule_WrongArity(ctx);
    size_t blen;
    const char *p = RedisModule_StringPtrLen(argv[1], &blen), *end = p + blen;
    Args leases = {0};
    while (p < end) {
        const char *sp = memchr(p, ' ', (size_t)(end - p));
        if (!sp) sp = end;
        if (sp > p) args_push(ctx, &leases, p, (size_t)(sp - p));
        p = sp + 1;
    }
    call_variadic(ctx, "ZMSCORE", "rq:v2:leases", &leases);
    call_variadic(ctx, "ZREM", "rq:v2:leases", &leases);
    char field[256], seq[32];
    for (size_t i = 0; i < leases.len; i++) {
        size_t len;
        const char *lease = RedisModule_StringPtrLen(leases.items[i], &len);
        const char *colon = memchr(lease, ':', len);
        const char *slash = colon ? memchr(colon, '/', len - (size_t)(colon - lease)) : NULL;
        NumberKeys k;
        if (!slash || colon - lease >= (long)sizeof seq ||
            !number_keys(&k, colon + 1, (size_t)(slash - colon - 1)))
            continue;
        snprintf(seq, sizeof seq, "%.*s", (int)(colon - lease), lease);
        snprintf(field, sizeof field, "@%.*s", (int)(len - (size_t)(slash + 1 - lease)), slash + 1);
        one(ctx, &k, seq, field);
    }
    long long acked = (long long)leases.len;
    args_free(ctx, &leases);
    return RedisModule_ReplyWithLongLong(ctx, acked);
}

/* The module's commands: each operation three ways (see the top of this file). */
#define FLOOR_COMMAND(name, body)                                                          \
    static int name(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) { body }
FLOOR_COMMAND(enqueue_calls, return enqueue(ctx, argv, argc, enqueue_by_calls);)
FLOOR_COMMAND(enqueue_keys, return enqueue(ctx, argv, argc, enqueue_on_keys);)
FLOOR_COMMAND(dequeue_calls, return dequeue(ctx, argv, argc, lease_by_calls);)
FLOOR_COMMAND(dequeue_keys, return dequeue(ctx, argv, argc, lease_on_keys);)
FLOOR_COMMAND(ack_calls, return ack(ctx, argv, argc, ack_by_calls);)
FLOOR_COMMAND(ack_keys, return ack(ctx, argv, argc, ack_on_keys);)

static int run_verbatim(RedisModuleCtx *ctx, RedisModuleString **argv, int argc,
                        RedisModuleCmdFunc command) {
    verbatim = 1;
    int result = command(ctx, argv, argc);
    verbatim = 0;
    RedisModule_ReplicateVerbatim(ctx);
    return result;
}
FLOOR_COMMAND(enqueue_verbatim, return run_verbatim(ctx, argv, argc, enqueue_keys);)
FLOOR_COMMAND(dequeue_verbatim, return run_verbatim(ctx, argv, argc, dequeue_keys);)
FLOOR_COMMAND(ack_verbatim, return run_verbatim(ctx, argv, argc, ack_keys);)

int RedisModule_OnLoad(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
    (void)argv;
    (void)argc;
    if (rm_init(ctx, "rqfloor") != RM_OK) return RM_ERR;
    const struct {
        const char *name;
        RedisModuleCmdFunc func;
    } commands[] = {
        {"rqfloor.enqueue", enqueue_calls},        {"rqfloor.dequeue", dequeue_calls},
        {"rqfloor.ack", ack_calls},                {"rqfloor.enqueue_keys", enqueue_keys},
        {"rqfloor.dequeue_keys", dequeue_keys},    {"rqfloor.ack_keys", ack_keys},
        {"rqfloor.enqueue_verbatim", enqueue_verbatim},
        {"rqfloor.dequeue_verbatim", dequeue_verbatim},
        {"rqfloor.ack_verbatim", ack_verbatim},
    };
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (RedisModule_CreateCommand(ctx, commands[i].name, commands[i].func, "write", 0, 0, 0) !=
            RM_OK)
            return RM_ERR;
    return RM_OK;
}
