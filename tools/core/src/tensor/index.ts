/**
 * Tensors and reverse-mode autograd for catechism.
 *
 * - `Tensor`: contiguous row-major float32 data + shape, `requiresGrad`,
 *   `grad`, `backward()`.
 * - Ops are plain functions (`add`, `matmul`, `linear`, `attention`, …); an op
 *   records a graph node only when an input requires grad and grad mode is on
 *   (see `noGrad`), so frozen weights cost no gradient work.
 * - All heavy math runs in @catechism/kernels, on the CPU or (`useDevice('cuda')`)
 *   on the GPU. A tensor's storage knows its device: `.data` is host memory
 *   and throws for a tensor on the GPU, whose values are read with `.host()`.
 */
export { useDevice, deviceInfo, DeviceUnavailableError } from './device.js';
export {
  Tensor, type Shape, type Device, type TensorOptions, type GradNode,
  tensor, fromData, scalar, zeros, ones, full, randn, rand,
  noGrad, enableGrad, isGradEnabled, shapeSize,
} from './tensor.js';
export {
  add, sub, mul, div, maximum, minimum, pow, dropout, neg, exp, log, sqrt, rsqrt, tanh, sigmoid, relu, gelu, silu, square, abs, scale,
  sum, mean, max,
  reshape, view, unsqueeze, squeeze, permute, transpose, slice, concat, stack, split,
  indexSelect, indexAdd, gather, topk,
  matmul, linear, loraLinear, type LowRankTerm,
  broadcastShapes,
} from './ops.js';
export {
  softmax, logSoftmax, layerNorm, rmsNorm, rope, embedding, attention, attentionQKV, crossEntropy, klDiv, mse,
  type SoftmaxOptions, type AttentionOptions, type Reduction,
} from './nn.js';
export { AdamW, clipGradNorm, type AdamWOptions } from './optim.js';
export { numericGradient, relativeError, gradCheck, type GradCheckInput, type GradCheckResult } from './gradcheck.js';
