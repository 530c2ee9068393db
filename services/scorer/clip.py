"""The CLIP model and its exact fast path for text.

The fast path changes how texts are encoded, never what: padding after the longest end-of-text
token is cut where the tower is causal with end-of-text pooling (then the padding cannot influence
the pooled feature), and the token prefix a template's texts share is run once per template
(a KV cache) where the tower's blocks are ones this module can run by hand. Both are checked on
the loaded model (:func:`truncation_is_exact`, :func:`prefix_sharing_is_exact`); anything else is
encoded at full context by open_clip itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from services.scorer.results import ModelInfo
from services.scorer.settings import ScorerSettings


def _text_tower(model: Any) -> tuple[Any, str, int | None] | None:
    """The module holding the token embedding and transformer, its pool type and eos id."""
    from open_clip.model import CLIP
    from open_clip.transformer import TextTransformer

    if isinstance(model, CLIP):
        return model, model.text_pool_type, getattr(model, "text_eos_id", None)
    text = getattr(model, "text", None)
    if isinstance(text, TextTransformer) and text.cls_emb is None and not text.use_pad_mask:
        return text, text.pool_type, text.eos_id
    return None


def truncation_is_exact(model: Any) -> bool:
    """Whether cutting padding after the longest real sequence leaves every text feature unchanged.

    True only for an open_clip text transformer with a causal attention mask (a token never sees
    later ones) that pools at the end-of-text token ('argmax' or 'eos'): the pooled position and
    everything before it are then independent of the padding. Anything else (bidirectional
    towers, 'last'/'first'/attention pooling, HF towers, CoCa's appended class token) is encoded
    at full context.
    """
    import torch

    tower = _text_tower(model)
    if tower is None:
        return False
    module, pool, _eos = tower
    mask = getattr(module, "attn_mask", None)
    if mask is None or mask.ndim != 2 or pool not in ("argmax", "eos"):
        return False
    n = mask.shape[0]
    causal = torch.ones(n, n, dtype=torch.bool).triu(1)
    return bool(torch.equal(torch.isinf(mask.cpu()) & (mask.cpu() < 0), causal)) and bool(
        torch.all(mask.cpu()[~causal] == 0)
    )


def prefix_sharing_is_exact(model: Any) -> bool:
    """Whether the text tower can run a shared token prefix once and the suffixes against its cache.

    Requires what truncation requires (causal mask, end-of-text pooling) plus blocks this module
    knows how to run by hand: open_clip's ``ResidualAttentionBlock`` with a batch-first
    ``nn.MultiheadAttention`` and no cross-attention. Anything else uses the plain path.
    """
    import torch
    from open_clip.transformer import ResidualAttentionBlock

    if not truncation_is_exact(model):
        return False
    tower = _text_tower(model)
    assert tower is not None
    transformer = tower[0].transformer
    if not getattr(transformer, "batch_first", False):
        return False
    for blk in transformer.resblocks:
        if type(blk) is not ResidualAttentionBlock or hasattr(blk, "ln_1_kv"):
            return False
        attn = blk.attn
        if (
            not isinstance(attn, torch.nn.MultiheadAttention)
            or not attn.batch_first
            or not attn._qkv_same_embed_dim
            or attn.in_proj_weight is None
            or attn.bias_k is not None
        ):
            return False
    return True


def common_prefix_lengths(tokens: Any, lengths: Any, groups: Sequence[int]) -> Any:
    """Per row, how many leading tokens it shares with every other row of its group.

    ``lengths`` are the real (unpadded) lengths. The shared prefix stops at least one token
    before the shortest row of the group ends, so every row keeps its end-of-text token (the
    pooled position) in its own suffix.
    """
    import torch

    group_t = torch.as_tensor(list(groups), device=tokens.device)
    out = torch.empty(tokens.shape[0], dtype=torch.long, device=tokens.device)
    for g in group_t.unique().tolist():
        rows = (group_t == g).nonzero().squeeze(1)
        block = tokens[rows]
        same = (block == block[:1]).all(dim=0).long().cumprod(dim=0).sum()
        out[rows] = torch.minimum(same, lengths[rows].min() - 1).clamp(min=1)
    return out


def _heads(x: Any, heads: int) -> Any:
    n, length, width = x.shape
    return x.view(n, length, heads, width // heads).transpose(1, 2)


def _qkv(blk: Any, x: Any) -> tuple[Any, Any, Any]:
    import torch.nn.functional as F

    attn = blk.attn
    q, k, v = F.linear(blk.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    h = attn.num_heads
    return _heads(q, h), _heads(k, h), _heads(v, h)


def _finish_block(blk: Any, x: Any, attended: Any) -> Any:
    import torch.nn.functional as F

    n, _h, length, _d = attended.shape
    merged = attended.transpose(1, 2).reshape(n, length, x.shape[-1])
    out = F.linear(merged, blk.attn.out_proj.weight, blk.attn.out_proj.bias)
    x = x + blk.ls_1(out)
    return x + blk.ls_2(blk.mlp(blk.ln_2(x)))


def encode_shared_prefix(
    tower: Any, pool: str, eos: int | None, tokens: Any, prefix: Any, groups: Sequence[int], pad_id: int
) -> Any:
    """Pooled, projected (not normalised) text features, computing each group's prefix once.

    ``tokens`` (B, L) are full-context rows; ``prefix[b]`` is the number of leading tokens row
    ``b`` shares with its group ``groups[b]`` (see :func:`common_prefix_lengths`). In a causal
    tower the hidden states of those tokens are the same for every row of the group, so they are
    computed once per group; each row then runs only its suffix, attending to the prefix's
    keys/values of each layer (a KV cache) and to its own earlier suffix tokens.
    """
    import torch
    import torch.nn.functional as F
    from open_clip.transformer import text_global_pool

    device = tokens.device
    context = tokens.shape[1]
    nonpad = (tokens != pad_id).long()
    lengths = (nonpad * torch.arange(1, context + 1, device=device)).max(dim=1).values
    uniq, gidx = torch.unique(torch.as_tensor(list(groups), device=device), return_inverse=True)
    # One representative row and prefix length per group.
    first = torch.zeros(len(uniq), dtype=torch.long, device=device).scatter_(
        0, gidx.flip(0), torch.arange(len(gidx) - 1, -1, -1, device=device)
    )
    plen = prefix[first]
    pmax = int(plen.max())
    prefix_tokens = tokens[first, :pmax]
    # Suffix of each row, left-aligned, and its absolute positions.
    slen = lengths - prefix
    smax = int(slen.max())
    offs = torch.arange(smax, device=device)
    src = (prefix[:, None] + offs[None, :]).clamp(max=context - 1)
    suffix = torch.where(offs[None, :] < slen[:, None], tokens.gather(1, src), pad_id)
    positions = (prefix[:, None] + offs[None, :]).clamp(max=context - 1)

    cast = tower.transformer.get_cast_dtype()
    pos_emb = tower.positional_embedding.to(cast)
    xp = tower.token_embedding(prefix_tokens).to(cast) + pos_emb[:pmax]
    xs = tower.token_embedding(suffix).to(cast) + pos_emb[positions]
    # Suffix queries see their group's real prefix tokens and their own earlier suffix tokens.
    see_prefix = torch.arange(pmax, device=device)[None, :] < prefix[:, None]  # (B, pmax)
    causal = torch.ones(smax, smax, dtype=torch.bool, device=device).tril()
    mask = torch.cat(
        [see_prefix[:, None, :].expand(-1, smax, -1), causal[None].expand(len(prefix), -1, -1)], dim=2
    )[:, None]  # (B, 1, smax, pmax + smax)
    for blk in tower.transformer.resblocks:
        qp, kp, vp = _qkv(blk, xp)
        qs, ks, vs = _qkv(blk, xs)
        xp_next = _finish_block(blk, xp, F.scaled_dot_product_attention(qp, kp, vp, is_causal=True))
        keys = torch.cat([kp[gidx], ks], dim=2)
        values = torch.cat([vp[gidx], vs], dim=2)
        xs = _finish_block(blk, xs, F.scaled_dot_product_attention(qs, keys, values, attn_mask=mask))
        xp = xp_next
    xs = tower.ln_final(xs)
    x = text_global_pool(xs, suffix, pool, eos_token_id=eos)
    proj = tower.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
    return x


def length_buckets(lengths: Sequence[int], max_rows: int, min_rows: int = 256) -> list[list[int]]:
    """Row indices in chunks of similar length, so each chunk is cut to little padding.

    Rows are taken shortest first; a chunk closes at ``max_rows``, or when the next row is longer
    and the chunk already holds ``min_rows`` (small chunks run the matrix units poorly).
    """
    order = sorted(range(len(lengths)), key=lambda j: lengths[j])
    chunks: list[list[int]] = []
    chunk: list[int] = []
    for j in order:
        if chunk and (
            len(chunk) >= max_rows
            or (lengths[j] > lengths[chunk[0]] and len(chunk) >= min(min_rows, max_rows))
        ):
            chunks.append(chunk)
            chunk = []
        chunk.append(j)
    if chunk:
        chunks.append(chunk)
    return chunks


def _pad_id(tokenizer: Any) -> int:
    inner = getattr(tokenizer, "tokenizer", None)  # HFTokenizer wraps a transformers tokenizer
    pad = getattr(inner, "pad_token_id", None)
    return int(pad) if pad is not None else 0


def model_fingerprint(model: Any, identity: str) -> str:
    """A content hash of the model identity and every weight tensor."""
    import torch

    h = hashlib.sha256(identity.encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(tensor.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class ClipModel:
    """A loaded open_clip model with its preprocessing and tokenizer."""

    def __init__(self, settings: ScorerSettings) -> None:
        import open_clip
        import torch

        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.settings = settings
        self.name = settings.model
        self.pretrained = settings.pretrained or ""
        self.device = torch.device(settings.device)
        self.precision = settings.precision
        model, _, preprocess = open_clip.create_model_and_transforms(
            settings.model,
            pretrained=settings.pretrained or None,
            device=self.device,
            precision=settings.precision,
        )
        model.eval()
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(settings.model)
        self.context_length = int(getattr(self.tokenizer, "context_length", None) or model.context_length)
        self.pad_id = _pad_id(self.tokenizer)
        self.truncation_exact = truncation_is_exact(model)
        self.truncate = self.truncation_exact and settings.text_truncation == "auto"
        self.share_prefix = (
            self.truncate and settings.prefix_sharing == "on" and prefix_sharing_is_exact(model)
        )
        self.id = f"{settings.model}|{self.pretrained}|{settings.precision}"
        self.fingerprint = model_fingerprint(model, f"{self.id}|{preprocess}")
        # One tiny forward gives the embedding width for any tower type (CLIP, custom text, HF).
        with torch.inference_mode():
            probe = model.encode_text(self.tokenizer(["a"]).to(self.device))
        self.embed_dim = int(probe.shape[-1])
        # CLIP's learned temperature; models without one (custom towers) get CLIP's initial 1/0.07.
        scale = getattr(model, "logit_scale", None)
        self.logit_scale = float(scale.detach().exp()) if scale is not None else 1 / 0.07

    def tokenize(self, texts: Sequence[str]) -> tuple[Any, list[bool]]:
        """Tokens at full context, and per text whether it was longer than the context."""
        # One extra position reveals truncation: a non-pad token there means the text did not fit.
        tokens = self.tokenizer(list(texts), context_length=self.context_length + 1)
        too_long = (tokens[:, self.context_length] != self.pad_id).tolist()
        return tokens[:, : self.context_length], too_long

    def encode_images(self, images: Any) -> Any:
        """Image features (not normalised) of a preprocessed batch."""
        import torch

        with torch.inference_mode():
            return self.model.encode_image(images.to(self.device))

    def encode_text(self, tokens: Any) -> Any:
        """L2-normalised float32 text features of full-context tokens, cut to the batch's length."""
        import torch
        import torch.nn.functional as F
        from open_clip.transformer import text_global_pool

        with torch.inference_mode():
            tokens = tokens.to(self.device)
            if not self.truncate:
                return F.normalize(self.model.encode_text(tokens).float(), dim=-1)
            tower = _text_tower(self.model)
            assert tower is not None
            t, pool, eos = tower
            nonpad = (tokens != self.pad_id).int()
            # Last real token + 1 over the batch (the end-of-text token is the last real one).
            length = int((nonpad * torch.arange(1, tokens.shape[1] + 1, device=tokens.device)).max())
            length = max(length, 1)
            cut = tokens[:, :length]
            cast = t.transformer.get_cast_dtype()
            x = t.token_embedding(cut).to(cast) + t.positional_embedding[:length].to(cast)
            x = t.transformer(x, attn_mask=t.attn_mask[:length, :length])
            x = t.ln_final(x)
            x = text_global_pool(x, cut, pool, eos_token_id=eos)
            proj = t.text_projection
            if proj is not None:
                x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
            return F.normalize(x.float(), dim=-1)

    def real_lengths(self, tokens: Any) -> Any:
        """Per row, the index after its last real (non-pad) token."""
        import torch

        nonpad = (tokens != self.pad_id).long()
        return (nonpad * torch.arange(1, tokens.shape[1] + 1)).max(dim=1).values

    def encode_text_shared(self, tokens: Any, prefix: Any, groups: Sequence[int]) -> Any:
        """L2-normalised float32 features, each group's common token prefix computed once."""
        import torch
        import torch.nn.functional as F

        tower = _text_tower(self.model)
        assert tower is not None and self.share_prefix
        t, pool, eos = tower
        with torch.inference_mode():
            x = encode_shared_prefix(
                t, pool, eos, tokens.to(self.device), prefix.to(self.device), groups, self.pad_id
            )
            return F.normalize(x.float(), dim=-1)

    def info(self) -> ModelInfo:
        """A description for GetModelInfo."""
        return ModelInfo(
            self.name,
            self.pretrained,
            str(self.device),
            self.precision,
            self.context_length,
            self.embed_dim,
            self.truncation_exact,
        )
