{
  "variables": {
    "ck_cuda%": "<!(node scripts/cuda-config.mjs enabled)"
  },
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
        "native/cpu/vecmath.cc",
        "native/cpu/linalg64.cc"
      ],
      "defines": ["NAPI_VERSION=8"],
      "cflags": ["-O3", "-fno-math-errno", "-pthread"],
      "cflags_cc": ["-O3", "-std=c++17", "-fno-math-errno", "-pthread", "-Wno-maybe-uninitialized"],
      "ldflags": ["-pthread"],
      "conditions": [
        ["ck_cuda==1", {
          "defines": ["CK_WITH_CUDA"],
          "sources": ["native/cuda/backend.cu"],
          "rules": [
            {
              "rule_name": "nvcc",
              "extension": "cu",
              "inputs": ["native/cuda/kernels.cuh", "native/cuda/ops_impl.inc", "native/ops.h", "native/gen/backend.h"],
              "outputs": ["<(INTERMEDIATE_DIR)/<(RULE_INPUT_ROOT).o"],
              "action": [
                "<!(node scripts/cuda-config.mjs nvcc)", "-c", "-O3", "-std=c++17", "-DCK_WITH_CUDA",
                "-Xcompiler", "-fPIC", "-Xcompiler", "-fno-math-errno",
                "<!@(node scripts/cuda-config.mjs gencode)",
                "<(RULE_INPUT_PATH)", "-o", "<@(_outputs)"
              ],
              "message": "NVCC <(RULE_INPUT_PATH)",
              "process_outputs_as_sources": 1
            }
          ],
          "libraries": ["<!(node scripts/cuda-config.mjs cudart)", "-ldl", "-lrt"]
        }]
      ]
    }
  ]
}
