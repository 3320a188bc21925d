/* The Redis module API functions the native floor uses, declared from the documented
 * signatures (https://redis.io/docs/latest/develop/reference/modules/modules-api-ref/) and
 * fetched by name when the module loads, as every module does. Only what native_floor.c calls. */
#ifndef RQ_MODULE_API_H
#define RQ_MODULE_API_H

#include <stddef.h>

typedef struct RedisModuleCtx RedisModuleCtx;
typedef struct RedisModuleString RedisModuleString;
typedef struct RedisModuleCallReply RedisModuleCallReply;
typedef struct RedisModuleKey RedisModuleKey;
typedef int (*RedisModuleCmdFunc)(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);

enum { RM_OK = 0, RM_ERR = 1, RM_APIVER_1 = 1 };
enum { RM_REPLY_STRING = 0, RM_REPLY_ERROR = 1, RM_REPLY_INTEGER = 2, RM_REPLY_ARRAY = 3,
       RM_REPLY_NULL = 4 };
#define RM_POSTPONED_LEN (-1L)
enum { RM_KEY_READ = 1, RM_KEY_WRITE = 2 };
enum { RM_LIST_HEAD = 0, RM_LIST_TAIL = 1 };
enum { RM_HASH_NONE = 0, RM_HASH_CFIELDS = 1 << 2 };
#define RM_HASH_DELETE ((RedisModuleString *)(long)1)

#define RM_API(ret, name, args) static ret (*RedisModule_##name) args
RM_API(int, GetApi, (const char *name, void *funcptr));
RM_API(void, SetModuleAttribs, (RedisModuleCtx *ctx, const char *name, int ver, int apiver));
RM_API(int, CreateCommand, (RedisModuleCtx *ctx, const char *name, RedisModuleCmdFunc func,
                            const char *flags, int firstkey, int lastkey, int keystep));
RM_API(RedisModuleCallReply *, Call, (RedisModuleCtx *ctx, const char *cmd, const char *fmt, ...));
RM_API(int, CallReplyType, (RedisModuleCallReply *reply));
RM_API(long long, CallReplyInteger, (RedisModuleCallReply *reply));
RM_API(const char *, CallReplyStringPtr, (RedisModuleCallReply *reply, size_t *len));
RM_API(size_t, CallReplyLength, (RedisModuleCallReply *reply));
RM_API(RedisModuleCallReply *, CallReplyArrayElement, (RedisModuleCallReply *reply, size_t i));
RM_API(void, FreeCallReply, (RedisModuleCallReply *reply));
RM_API(const char *, StringPtrLen, (const RedisModuleString *s, size_t *len));
RM_API(RedisModuleString *, CreateString, (RedisModuleCtx *ctx, const char *ptr, size_t len));
RM_API(void, FreeString, (RedisModuleCtx *ctx, RedisModuleString *s));
RM_API(int, WrongArity, (RedisModuleCtx *ctx));
RM_API(int, ReplyWithArray, (RedisModuleCtx *ctx, long len));
RM_API(void, ReplySetArrayLength, (RedisModuleCtx *ctx, long len));
RM_API(int, ReplyWithLongLong, (RedisModuleCtx *ctx, long long ll));
RM_API(int, ReplyWithStringBuffer, (RedisModuleCtx *ctx, const char *buf, size_t len));
RM_API(int, ReplyWithError, (RedisModuleCtx *ctx, const char *err));
RM_API(RedisModuleKey *, OpenKey, (RedisModuleCtx *ctx, RedisModuleString *name, int mode));
RM_API(void, CloseKey, (RedisModuleKey *key));
RM_API(size_t, ValueLength, (RedisModuleKey *key));
RM_API(int, ListPush, (RedisModuleKey *key, int where, RedisModuleString *ele));
RM_API(RedisModuleString *, ListPop, (RedisModuleKey *key, int where));
RM_API(int, HashGet, (RedisModuleKey *key, int flags, ...));
RM_API(int, HashSet, (RedisModuleKey *key, int flags, ...));
RM_API(int, ZsetAdd, (RedisModuleKey *key, double score, RedisModuleString *ele, int *flags));
RM_API(int, ZsetRem, (RedisModuleKey *key, RedisModuleString *ele, int *deleted));
RM_API(int, ZsetScore, (RedisModuleKey *key, RedisModuleString *ele, double *score));
RM_API(int, Replicate, (RedisModuleCtx *ctx, const char *cmd, const char *fmt, ...));
RM_API(int, ReplicateVerbatim, (RedisModuleCtx *ctx));
RM_API(RedisModuleString *, CreateStringFromLongLong, (RedisModuleCtx *ctx, long long ll));
RM_API(int, StringToLongLong, (const RedisModuleString *s, long long *ll));
RM_API(void *, Alloc, (size_t bytes));
RM_API(void *, Realloc, (void *ptr, size_t bytes));
RM_API(void, Free, (void *ptr));

/* The first field of the context the server passes to RedisModule_OnLoad is its GetApi. */
static int rm_init(RedisModuleCtx *ctx, const char *name) {
    RedisModule_GetApi = (int (*)(const char *, void *))((void **)ctx)[0];
#define RM_GET(name) \
    if (RedisModule_GetApi("RedisModule_" #name, (void *)&RedisModule_##name) != RM_OK) return RM_ERR
    RM_GET(SetModuleAttribs); RM_GET(CreateCommand); RM_GET(Call); RM_GET(CallReplyType);
    RM_GET(CallReplyInteger); RM_GET(CallReplyStringPtr); RM_GET(CallReplyLength);
    RM_GET(CallReplyArrayElement); RM_GET(FreeCallReply); RM_GET(StringPtrLen);
    RM_GET(CreateString); RM_GET(FreeString); RM_GET(WrongArity); RM_GET(ReplyWithArray);
    RM_GET(ReplySetArrayLength); RM_GET(ReplyWithLongLong); RM_GET(ReplyWithStringBuffer);
    RM_GET(ReplyWithError); RM_GET(Alloc); RM_GET(Realloc); RM_GET(Free);
    RM_GET(OpenKey); RM_GET(CloseKey); RM_GET(ValueLength); RM_GET(ListPush); RM_GET(ListPop);
    RM_GET(HashGet); RM_GET(HashSet); RM_GET(ZsetAdd); RM_GET(ZsetRem); RM_GET(ZsetScore);
    RM_GET(Replicate); RM_GET(ReplicateVerbatim); RM_GET(CreateStringFromLongLong); RM_GET(StringToLongLong);
#undef RM_GET
    RedisModule_SetModuleAttribs(ctx, name, 1, RM_APIVER_1);
    return RM_OK;
}

#endif
