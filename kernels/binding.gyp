{
  "targets": [
    {
      "target_name": "catechism_kernels",
      "sources": [
        "native/addon.cc",
        "native/cpu/runtime.cc",
        "native/cpu/pool.cc",
        "native/cpu/gemm.cc",
        "native/cpu/gemm_kernels.cc",
        "native/cpu/elementwise.cc",
        "native/cpu/nn.cc",
        "native/cpu/convert.cc",
        "native/cpu/vecmath.cc"
      ],
      "defines": ["NAPI_VERSION=8"],
      "cflags": ["-O3", "-fno-math-errno", "-pthread"],
      "cflags_cc": ["-O3", "-std=c++17", "-fno-math-errno", "-pthread", "-Wno-maybe-uninitialized"],
      "ldflags": ["-pthread"]
    }
  ]
}
