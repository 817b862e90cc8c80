/**
 * The compute device of the tensor layer. `useDevice('cuda')` makes every
 * kernel call of the tensor ops run on the GPU (the kernels' 'cuda' backend:
 * host tensors are staged to the GPU per call and the results copied back),
 * so every tool gets `--device cuda` from the shared CLI runner without any
 * change of its own. Tensors stay host tensors; a tensor moved with
 * `t.to('cuda')` holds GPU memory and refuses `.data` (see Tensor.host()).
 */
import * as kernels from '@catechism/kernels';
import type { Device } from './tensor.js';

/** Thrown when the GPU cannot be used; the message says what is missing. */
export class DeviceUnavailableError extends Error {
  override name = 'DeviceUnavailableError';
}

/** Select where kernels run. Throws DeviceUnavailableError (naming what is missing) when `cuda` cannot run here. */
export function useDevice(device: Device): void {
  if (device === 'cpu') {
    kernels.setBackend('cpu');
    return;
  }
  if (device !== 'cuda') throw new TypeError(`useDevice: unknown device ${JSON.stringify(device)} (expected cpu or cuda)`);
  const why = kernels.cudaUnavailable();
  if (why !== null) throw new DeviceUnavailableError(`--device cuda: ${why}`);
  kernels.setBackend('cuda');
}

/** The device kernels run on now, and a description of the GPU (or why there is none). */
export function deviceInfo(): { device: Device; backend: kernels.Backend; cuda: string } {
  const i = kernels.info();
  return { device: i.device, backend: i.backend, cuda: i.cuda };
}
