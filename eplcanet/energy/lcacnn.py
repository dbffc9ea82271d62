"""LCA-RCNN: a sparse-coding frontend (LCA or matching pursuit) in front of an EP-trained CNN.

The image x (batch, C, H, W) is standardised per sample (and whitened, when the dictionary was
learned on whitened images: ``set_whitening``) and coded once per minibatch, without an
autograd graph and outside the relaxation: a = coder(x; Phi), (batch, F, H_code, W_code). A free
"copy" layer s_0 of the code's shape sits below the conv layers s_1 .. s_L of an EnergyNet whose
first synapse maps s_0 to s_1. The primitive function is

    Phi(x, s; beta, y) = <a, s_0> + sum_i <Pool(W_i * s_{i-1} + b_i), s_i> + ... - beta * L

so dPhi/ds_0 = a + W_1^T Unpool(s_1): the copy layer follows s_0 <- sigma(a + feedback from s_1).
``code_gain`` = c multiplies the code wherever it drives the network (a is then c * coder(x)):
LASSO codes of standardised images are small (median nonzero ~0.2 on CIFAR), so with c = 1 the
copy layer, and through it every layer above, is driven weakly. With ``scale_feedback`` = g the
dynamics of s_0 become

    s_0 <- sigma(a + g * W_1^T Unpool(s_1))      (all other layers unchanged)

which is the gradient dynamics of Phi for g = 1 only; for g != 1 they form a vector field (as
VF_CNN's), and the EP estimator still takes its parameter updates from Phi.

Dictionary modes (``dict_training``):
    pretrained  Phi is loaded (a cifar_dictlearning.py file) and never changes.
    finetune    Phi is loaded, then updated by a Hebbian rule during EP training.
    learn       Phi starts random (unit-norm atoms), then is updated the same way.
The update uses the nudged, settled copy layer as the code: after the beta2 phase of an EP step
(beta2 > 0), codes = s_0 / c and residual = x_std - D(codes), and the coder's ``update_dictionary`` moves
the atoms along codes (x) residual / (times_active + 1) and renormalises them, once every
``dict_update_every`` such minibatches.

Code cache: with a fixed dictionary the code depends only on the image, so ``enable_code_cache``
keeps codes keyed by the image's bytes; a lookup is valid only while the dictionary and the coder's
settings are those the codes were computed with (checked on every lookup).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence

import torch
from tqdm.auto import tqdm

from ..sparse.base import SparseCoder
from ..sparse.lca import LCAConv2D
from ..sparse.preproc import check_whitening, conv_whiten, standardise
from ..sparse.pursuit import ConvMP2D
from .networks import EnergyNet

Tensor = torch.Tensor

DICT_MODES = ("pretrained", "finetune", "learn")


def coder_code_shape(coder: SparseCoder, in_shape: Sequence[int]) -> tuple[int, ...]:
    """(F, H_code, W_code) of the codes of one (C, H, W) input."""
    c, h, w = in_shape
    if isinstance(coder, LCAConv2D):
        return tuple(coder.code_shape((1, c, h, w))[1:])
    if isinstance(coder, ConvMP2D):
        return (coder.out_neurons, *coder.code_shape(h, w))
    with torch.no_grad():  # any other coder: ask it (one zero image)
        p = next(iter(coder.parameters()))
        return tuple(coder.code(torch.zeros(1, c, h, w, dtype=p.dtype, device=p.device)).shape[1:])


class CodeCache:
    """Codes of images keyed by the images' bytes (a (batch, ...) tensor -> one key per row).

    Valid for one dictionary and coder configuration: :meth:`valid_for` compares both with those
    the codes were computed with, so a changed dictionary can never serve stale codes. Codes are
    kept on the CPU.
    """

    def __init__(self, dictionary: Tensor, config: str) -> None:
        self.dictionary = dictionary.detach().clone()
        self.config = config
        self.codes: dict[bytes, Tensor] = {}

    def __len__(self) -> int:
        return len(self.codes)

    @staticmethod
    def keys(x: Tensor) -> list[bytes]:
        """One digest per sample of x (its dtype, shape and bytes)."""
        flat = x.detach().cpu().contiguous().flatten(1)
        head = f"{flat.dtype}{tuple(x.shape[1:])}".encode()
        raw = flat.view(torch.uint8).numpy()
        return [hashlib.blake2b(head + row.tobytes(), digest_size=20).digest() for row in raw]

    def valid_for(self, dictionary: Tensor, config: str) -> bool:
        d = self.dictionary
        return (
            config == self.config
            and d.dtype == dictionary.dtype
            and d.shape == dictionary.shape
            and bool(torch.equal(d, dictionary.detach().to(d.device)))
        )

    def add(self, keys: Sequence[bytes], codes: Tensor) -> None:
        codes = codes.detach().cpu()
        for key, code in zip(keys, codes):
            self.codes[key] = code

    def lookup(self, keys: Sequence[bytes]) -> list[Tensor | None]:
        return [self.codes.get(k) for k in keys]

    def nbytes(self) -> int:
        return sum(c.numel() * c.element_size() for c in self.codes.values())

    def stats(self, sample: int = 1024) -> dict[str, float]:
        """How strongly the codes can drive a network: the fraction of nonzero entries (over all
        codes) and the median and 99th percentile of the nonzero magnitudes (over `sample`
        evenly spaced codes; NaN when none is nonzero)."""
        codes = list(self.codes.values())
        if not codes:
            raise ValueError("the code cache is empty")
        nonzero = sum(int(c.count_nonzero()) for c in codes)
        total = sum(c.numel() for c in codes)
        picked = codes[:: max(1, math.ceil(len(codes) / sample))]
        values = torch.cat([c.abs().flatten() for c in picked]).double()
        values = values[values > 0]
        found = values.numel() > 0
        return {
            "nonzero": nonzero / total,
            "median": float(values.median()) if found else math.nan,
            "p99": float(torch.quantile(values, 0.99)) if found else math.nan,
        }


class LCA_CNN(EnergyNet):
    """EP network on the sparse code of its input, with a free copy layer s_0 (module docstring).

    Args:
        in_shape: image shape (C, H, W).
        coder: a convolutional SparseCoder (``eplcanet.sparse.make_sparse_coder``) taking C input
            channels; its dictionary is never trained by the optimizer (requires_grad is off).
            Build it without input standardisation: this model standardises every image.
        channels, kernels, strides, paddings, pools, fc, act, softmax, loss, scale, relaxation:
            the conv layers above s_0, the classifier and how the states relax, passed on to
            EnergyNet as given (its signature and checks; one pool per conv layer).
        scale_feedback: g, the weight of the top-down input of s_0 (1: gradient dynamics of Phi).
        code_gain: c > 0, the factor of the code in the drive of s_0 (and in Phi).
        dict_training: 'pretrained' | 'finetune' | 'learn' (see the module docstring).
        dict_update_every: a Hebbian step every this many nudged training minibatches.

    States: [s_0 (batch, F, H_code, W_code), s_1, ..., s_L]; ``input_drive(x)`` is the drive
    c * a of the code a = ``encode(x)``.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        coder: SparseCoder,
        channels: list[int],
        *net_args,
        scale_feedback: float = 1.0,
        code_gain: float = 1.0,
        dict_training: str = "pretrained",
        dict_update_every: int = 1,
        dictionary_sync=None,
        **net_kwargs,
    ) -> None:
        if len(in_shape) != 3:
            raise ValueError(f"LCA_CNN needs an image shape (C, H, W), got {in_shape}")
        if not channels:
            raise ValueError("LCA_CNN needs at least one conv layer above the copy layer s_0")
        if not isinstance(coder, SparseCoder):
            raise TypeError(f"coder must be a SparseCoder, got {type(coder).__name__}")
        if getattr(coder, "in_neurons", in_shape[0]) != in_shape[0]:
            raise ValueError(
                f"the coder takes {coder.in_neurons} input channels, the images have {in_shape[0]}"
            )
        if dict_training not in DICT_MODES:
            raise ValueError(
                f"dict_training must be one of {', '.join(DICT_MODES)}, got {dict_training!r}"
            )
        if not (isinstance(code_gain, (int, float)) and math.isfinite(code_gain) and code_gain > 0):
            raise ValueError(f"code_gain must be a finite number > 0, got {code_gain!r}")
        if not isinstance(dict_update_every, int) or dict_update_every < 1:
            raise ValueError(f"dict_update_every must be an int >= 1, got {dict_update_every!r}")
        if getattr(coder, "input_zero_mean", False) or getattr(coder, "input_unit_var", False):
            raise ValueError(
                "build the coder with input_zero_mean=False and input_unit_var=False: LCA_CNN "
                "standardises the images itself (and needs them standardised for the residual)"
            )
        code_shape = coder_code_shape(coder, in_shape)
        super().__init__(code_shape, channels, *net_args, **net_kwargs)
        self.image_shape = tuple(in_shape)
        self.code_shape = code_shape
        self.coder = coder
        # The dictionary moves only by the Hebbian rule (finetune, learn), never by the optimizer.
        for p in coder.parameters():
            p.requires_grad_(False)
        self.state_shapes = [code_shape, *self.state_shapes]
        self.scale_feedback = float(scale_feedback)
        self.code_gain = float(code_gain)
        self.dict_training = dict_training
        self.dict_update_every = dict_update_every
        # Nudged minibatches seen: a buffer, so a resumed run keeps the update rhythm.
        self.register_buffer("nudged_steps", torch.zeros((), dtype=torch.long))
        self._memo: tuple[Tensor, int, Tensor] | None = None
        self._cache: CodeCache | None = None
        # A multi-process run's context (eplcanet.distributed.DistContext: gather_batch,
        # broadcast_; None: one process): dictionary steps then use every process's part of the
        # minibatch, and end identical everywhere.
        self.dictionary_sync = dictionary_sync
        # The dictionary file's whitening (set_whitening); None: standardised images are coded.
        self.register_buffer("whiten_kernel", None)
        self.register_buffer("whiten_bias", None)

    # ----------------------------------------------------------------------------- coding
    @property
    def dictionary(self) -> Tensor:
        """The coder's atoms Phi, (F, C, k, k)."""
        return self.coder.dictionary

    def _coder_config(self, dtype: torch.dtype) -> str:
        kernel = self.whiten_kernel
        whitening = None if kernel is None else tuple(kernel.shape)
        return f"{self.coder!r} {dtype} whitening={whitening}"

    def set_whitening(self, kernel: Tensor, bias: Tensor) -> None:
        """Whiten every image before coding with (kernel (C, C, k, k), bias (C,)), the whitening
        its dictionary was learned with (``sparse.fit_conv_whitening``, the dictionary file's
        ``config['whitening']``). Cached codes are dropped."""
        check_whitening(kernel, bias, self.image_shape[0])
        ref = self.dictionary
        self.whiten_kernel = kernel.detach().to(ref).clone()
        self.whiten_bias = bias.detach().to(ref).clone()
        self._cache, self._memo = None, None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint of a whitened model restores its whitening into a model built without it.
        for name in ("whiten_kernel", "whiten_bias"):
            if prefix + name in state_dict and getattr(self, name) is None:
                self._buffers[name] = torch.empty_like(state_dict[prefix + name])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def coder_input(self, x: Tensor) -> Tensor:
        """What the coder sees of images x: standardised, and whitened when set_whitening was."""
        if self.whiten_kernel is None:
            return standardise(x)
        return conv_whiten(x, self.whiten_kernel, self.whiten_bias)

    def _code(self, x: Tensor) -> Tensor:
        return self.coder.code(self.coder_input(x))

    def encode(self, x: Tensor) -> Tensor:
        """The sparse code a of images x (batch, C, H, W): (batch, F, H_code, W_code).

        Without an autograd graph unless x requires grad under grad mode (then the solver is
        differentiated, e.g. for attacks); served by the code cache when it holds every image.
        """
        if torch.is_grad_enabled() and x.requires_grad:
            return self._code(x)
        with torch.no_grad():
            cache = self._cache
            if cache is None or not cache.valid_for(self.dictionary, self._coder_config(x.dtype)):
                return self._code(x)
            keys = cache.keys(x)
            found = cache.lookup(keys)
            if all(c is not None for c in found):
                return torch.stack(found).to(x.device)
            return self._code(x)

    def input_drive(self, x: Tensor) -> Tensor:
        """The drive of the copy layer s_0: code_gain times the code of x, (batch, F, H_code,
        W_code)."""
        drive = self.code_gain * self.encode(x)  # exact for gain 1
        # phi(x, ...) needs the same drive; the EP estimator calls it right after, with the same x.
        self._memo = None if drive.requires_grad else (x, x._version, drive)
        return drive

    def _drive_for(self, x: Tensor) -> Tensor:
        memo = self._memo
        if memo is not None and memo[0] is x and memo[1] == x._version:
            return memo[2]
        return self.input_drive(x)

    # ----------------------------------------------------------------------------- energy
    def phi(
        self,
        x: Tensor,
        states: list[Tensor],
        beta: float | Tensor = 0.0,
        y: Tensor | None = None,
    ) -> Tensor:
        """Phi per sample, (batch,): <c a, s_0> plus EnergyNet's Phi of s_1.. driven by s_0."""
        a = self._drive_for(x)
        s0 = states[0]
        return (a * s0).flatten(1).sum(1) + super().phi(s0, states[1:], beta, y)

    def _synapse_grad_diffs(self, in_a, in_b, sa, sb, beta_a, beta_b, y) -> dict:
        # The copy layer s_0 feeds synapse 0; <a, s_0> holds no trained parameter (the
        # dictionary learns by the Hebbian rule).
        return super()._synapse_grad_diffs(sa[0], sb[0], sa[1:], sb[1:], beta_a, beta_b, y)

    def phi_grad_states(
        self,
        drive: Tensor,
        states: list[Tensor],
        beta: float | Tensor = 0.0,
        y: Tensor | None = None,
        layers: set[int] | None = None,
        memo: dict | None = None,
    ) -> list[Tensor | None]:
        """[a + g * W_1^T Unpool(s_1), dPhi/ds_1, ...] in closed form; `drive` is input_drive's.
        `layers` and `memo` as in EnergyNet (None: all layers; no memo)."""
        want = set(range(len(states))) if layers is None else set(layers)
        up, down = self._conv_synapse(0, states[0], states[1], 1 in want, 0 in want, memo)
        rest = super().phi_grad_states(up, states[1:], beta, y, {i - 1 for i in want if i}, memo)
        return [drive + self.scale_feedback * down if 0 in want else None, *rest]

    # ----------------------------------------------------------------------------- dictionary
    def on_nudged(self, x: Tensor, states: list[Tensor], beta: float) -> None:
        """Hebbian dictionary step from the nudged equilibrium (finetune, learn; training mode).

        Called by the EP estimator after the beta2 phase; only beta2 > 0 counts (with
        --random-sign a minibatch drawn with -beta2 is skipped).
        """
        if self.dict_training == "pretrained" or not self.training or not beta > 0:
            return
        self.nudged_steps += 1
        if int(self.nudged_steps) % self.dict_update_every == 0:
            # s_0 settles near sigma(c a): back on the code's scale before reconstructing
            self.update_dictionary(x, states[0] / self.code_gain)

    @torch.no_grad()
    def update_dictionary(self, x: Tensor, codes: Tensor) -> None:
        """One Hebbian step with codes (batch, F, H_code, W_code) of images x (batch, C, H, W):
        residual = coder_input(x) - D(codes); atoms stay unit-norm."""
        if self.dict_training == "pretrained":
            raise RuntimeError("a pretrained dictionary is fixed; use finetune or learn")
        sync = self.dictionary_sync
        if sync is not None:  # the step of the global minibatch, as one process would take it
            x, codes = sync.gather_batch(x), sync.gather_batch(codes)
        xs = self.coder_input(x)
        codes = codes.contiguous()
        residual = xs - self.coder.decode(codes, output_size=tuple(xs.shape[-2:]))
        self.coder.update_dictionary(codes, residual)
        if sync is not None:  # rank 0's atoms, bit for bit, even after nondeterministic kernels
            sync.broadcast_(self.dictionary)

    def load_dictionary_weights(self, weight: Tensor) -> None:
        """Copy atoms (F, C, k, k) into the coder, exactly when they are unit-norm (as dictionary
        files are), else rescaled to unit norm."""
        w = self.dictionary
        if tuple(weight.shape) != tuple(w.shape):
            raise ValueError(
                f"the dictionary has shape {tuple(weight.shape)}, the model needs {tuple(w.shape)} "
                "(lca_feats, input channels, lca_ksize, lca_ksize)"
            )
        with torch.no_grad():
            weight = weight.to(w)
            norms = weight.flatten(1).norm(dim=1)
            # Rescaling atoms that are already unit-norm would still flip low bits: keep them.
            if not bool(torch.allclose(norms, torch.ones_like(norms), atol=1e-5, rtol=0)):
                weight = weight / norms.clamp_min(1e-12).view(-1, 1, 1, 1)
            w.copy_(weight)

    # ----------------------------------------------------------------------------- code cache
    def enable_code_cache(self) -> None:
        """Start caching codes for the current dictionary (pretrained mode only)."""
        if self.dict_training != "pretrained":
            raise ValueError(
                f"codes can be cached only with a fixed dictionary (pretrained), not "
                f"{self.dict_training!r}"
            )
        self._cache = CodeCache(self.dictionary, self._coder_config(self.dictionary.dtype))

    def disable_code_cache(self) -> None:
        self._cache = None

    @property
    def code_cache(self) -> CodeCache | None:
        return self._cache

    @torch.no_grad()
    def fill_code_cache(self, batches: Iterable[Tensor], total: int | None = None,
                        desc: str = "LCA codes") -> int:
        """Code every image of `batches` ((batch, C, H, W) tensors on the model's device) not yet
        cached, with a progress bar; returns the number of cached codes."""
        if self._cache is None:
            self.enable_code_cache()
        cache = self._cache
        for x in tqdm(batches, total=total, desc=desc, leave=False, disable=None):
            keys = cache.keys(x)
            missing = [i for i, c in enumerate(cache.lookup(keys)) if c is None]
            if missing:
                idx = torch.tensor(missing, device=x.device)
                cache.add([keys[i] for i in missing], self._code(x.index_select(0, idx)))
        return len(cache)

    def extra_repr(self) -> str:
        return (f"dict_training={self.dict_training!r}, scale_feedback={self.scale_feedback}, "
                f"code_gain={self.code_gain}, whitening={self.whiten_kernel is not None}, "
                f"dict_update_every={self.dict_update_every}, code_shape={self.code_shape}")


__all__ = ["DICT_MODES", "LCA_CNN", "CodeCache", "coder_code_shape", "standardise"]
