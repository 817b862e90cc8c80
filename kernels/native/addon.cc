#include <napi.h>
// Placeholder entry point; the kernel table is registered here.
static Napi::Object Init(Napi::Env env, Napi::Object exports) { return exports; }
NODE_API_MODULE(catechism_kernels, Init)
