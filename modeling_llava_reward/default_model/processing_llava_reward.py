"""Processor for LLaVA-Reward: (prompt, image) pairs in, the wrapped VLM's inputs out.

It owns the family's image processor and tokenizer, builds the text the reward reads (the published format where
checkpoints were trained on one, the tokenizer's chat template otherwise), pairs prompts and images element-wise,
truncates over-long prompts inside the prompt only, and delegates image-token expansion to the family's own
transformers processor (so `image_grid_thw`, `mm_token_type_ids`, `image_sizes`, ... come out exactly as the VLM
expects).
"""

import inspect
import json
import logging
import threading
import weakref
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from pathlib import Path

import transformers
from transformers import ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature

from .families import get_family
from .families import supported_model_types
from .image_inputs import InputError
from .image_inputs import load_images


logger = logging.getLogger(__name__)

# A transformers fast tokenizer keeps its padding and truncation settings on the shared Rust object and changes them
# at every call, so concurrent calls pad each other's batches wrongly or fail ("Already borrowed"). Calls that
# tokenize hold their tokenizer's lock (kept here, not on the processor: a processor must stay copyable/picklable).
_TOKENIZER_LOCKS: "weakref.WeakKeyDictionary[object, threading.Lock]" = weakref.WeakKeyDictionary()
_TOKENIZER_LOCKS_GUARD = threading.Lock()


def tokenizer_lock(tokenizer) -> threading.Lock:
    """The lock that serialises the calls of `tokenizer` (one per tokenizer object)."""
    with _TOKENIZER_LOCKS_GUARD:
        return _TOKENIZER_LOCKS.setdefault(tokenizer, threading.Lock())


def without_video(processor_class: type[ProcessorMixin]) -> type[ProcessorMixin]:
    """An image-only subclass of a processor whose video processor needs torchvision (Qwen-VL, SmolVLM)."""
    if "video_processor" not in processor_class.get_attributes():
        return processor_class

    class ImageOnlyProcessor(processor_class):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            # ProcessorMixin reads its sub-processors from this signature: no video processor is expected.
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    ImageOnlyProcessor.__name__ = ImageOnlyProcessor.__qualname__ = f"{processor_class.__name__}ImageOnly"
    return ImageOnlyProcessor


class LlavaRewardProcessor(ProcessorMixin):
    r"""
    Builds LLaVA-Reward inputs from prompts and images.

    Args:
        image_processor: the VLM family's image processor.
        tokenizer: the VLM's tokenizer.
        family (`str`): registry name of the VLM family (`llava_reward.families`).
        vlm_processor_class (`str`): name of the family's transformers processor class (e.g. `"LlavaProcessor"`).
        vlm_processor_kwargs (`dict`, *optional*): its extra constructor arguments (`patch_size`, ...).
        prompt_template (`str`, *optional*): text with `{image}`, `{prompt}` and `{eos}` placeholders. Defaults to
            the family's published format, or to the chat template when the family has none.
        max_prompt_tokens (`int`, defaults to 256): prompts longer than this many tokens are truncated (the
            prompt only: image tokens and the reward token are always kept).
        chat_template (`str`, *optional*): the chat template used when there is no prompt template.

    Example:

    ```python
    >>> from llava_reward import LlavaRewardProcessor
    >>> from llava_reward.testing import tiny_vlm, tiny_images
    >>> processor = LlavaRewardProcessor.from_vlm_processor(tiny_vlm("qwen2_5_vl")[1])
    >>> batch = processor("a red cat", tiny_images(3))   # one prompt broadcast to three images
    >>> batch["input_ids"].shape[0], int(batch["image_grid_thw"].shape[0])
    (3, 3)
    ```"""

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        family: str | None = None,
        vlm_processor_class: str | None = None,
        vlm_processor_kwargs: dict | None = None,
        prompt_template: str | None = None,
        max_prompt_tokens: int = 256,
        chat_template: str | None = None,
        **kwargs,
    ):
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)
        self.family = family
        self.vlm_processor_class = vlm_processor_class
        self.vlm_processor_kwargs = dict(vlm_processor_kwargs or {})
        self.prompt_template = prompt_template or get_family(family).prompt_template
        self.max_prompt_tokens = max_prompt_tokens
        processor_class = without_video(getattr(transformers, vlm_processor_class))
        self.vlm_processor = processor_class(
            image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **self.vlm_processor_kwargs
        )
        # Prompts may not smuggle in special tokens: an image placeholder would break the pairing with images and
        # an end-of-turn token would move the reward token.
        self._special_tokens = sorted(
            {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
            | set(tokenizer.all_special_tokens),
            key=len,
            reverse=True,
        )

    @classmethod
    def from_vlm_processor(cls, vlm_processor: ProcessorMixin, **kwargs) -> "LlavaRewardProcessor":
        """Wrap a VLM's own transformers processor (e.g. `AutoProcessor.from_pretrained(base_model)`)."""
        base_class = next(c for c in type(vlm_processor).__mro__ if hasattr(transformers, c.__name__))
        # The constructor arguments of the family's processor (patch_size, image_seq_len, ...), read back from it.
        parameters = inspect.signature(base_class.__init__).parameters
        skipped = set(base_class.get_attributes()) | {"self", "chat_template"}
        vlm_processor_kwargs = {
            name: getattr(vlm_processor, name)
            for name, parameter in parameters.items()
            if name not in skipped and parameter.kind is parameter.POSITIONAL_OR_KEYWORD and hasattr(vlm_processor, name)
        }
        return cls(
            image_processor=vlm_processor.image_processor,
            tokenizer=vlm_processor.tokenizer,
            family=get_family(_model_type_of(base_class)).name,
            vlm_processor_class=base_class.__name__,
            vlm_processor_kwargs=vlm_processor_kwargs,
            chat_template=vlm_processor.chat_template,
            **kwargs,
        )

    @classmethod
    def from_base(cls, path, **kwargs) -> "LlavaRewardProcessor":
        """The processor of a base VLM (a folder or Hub id), or the `LlavaRewardProcessor` saved there.

        Qwen-VL and SmolVLM processors need torchvision for their video half (and `AutoProcessor` then silently
        returns the bare tokenizer): for those the image-only processor is built from the folder's image processor,
        tokenizer and saved processor arguments.
        """
        from transformers import AutoConfig
        from transformers import AutoImageProcessor
        from transformers import AutoProcessor
        from transformers import AutoTokenizer
        from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES
        from transformers.utils import cached_file

        config_file = cached_file(path, "processor_config.json", _raise_exceptions_for_missing_entries=False)
        saved = json.loads(Path(config_file).read_text()) if config_file else {}
        if saved.get("processor_class") == cls.__name__:
            return cls.from_pretrained(path, **kwargs)
        try:
            vlm_processor = AutoProcessor.from_pretrained(path)
        except (OSError, ImportError, ValueError):  # the video processor cannot be built
            vlm_processor = None
        if not isinstance(vlm_processor, ProcessorMixin):
            base_class = getattr(transformers, PROCESSOR_MAPPING_NAMES[AutoConfig.from_pretrained(path).model_type])
            parameters = set(inspect.signature(base_class.__init__).parameters) - set(base_class.get_attributes())
            arguments = {key: value for key, value in saved.items() if key in parameters - {"self", "chat_template"}}
            tokenizer = AutoTokenizer.from_pretrained(path)
            vlm_processor = without_video(base_class)(
                image_processor=AutoImageProcessor.from_pretrained(path),
                tokenizer=tokenizer,
                chat_template=tokenizer.chat_template,
                **arguments,
            )
        return cls.from_vlm_processor(vlm_processor, **kwargs)

    def __call__(self, prompts=None, images=None, *, text=None, return_tensors: str = "pt", **kwargs) -> BatchFeature:
        """Pair `prompts[i]` with `images[i]` (one prompt may serve many images) and build the model inputs.

        The prompts may also come as `text=`, the name every transformers processor uses:
        `processor(images=images, text=prompts)`.
        """
        if text is not None:
            if prompts is not None:
                raise TypeError("Pass the prompts once: as the first argument or as `text=`, not both.")
            prompts = text
        if prompts is None or images is None:
            raise TypeError("Pass the prompts (`text=`) and the `images=` to score.")
        prompts, images = self.pair(prompts, load_images(images))
        texts = [self.build_text(self.truncate_prompt(prompt, index)) for index, prompt in enumerate(prompts)]
        kwargs.setdefault("do_convert_rgb", False)  # load_images made them RGB: the image processor would copy them
        try:
            with tokenizer_lock(self.tokenizer):
                return self.vlm_processor(
                    text=texts,
                    images=[[image] for image in images],
                    return_tensors=return_tensors,
                    padding=True,
                    add_special_tokens=self.prompt_template is not None,  # a chat template writes its own BOS
                    **kwargs,
                )
        except ValueError:
            self._check_each_image(images)  # an image the family's image processor refuses (e.g. Qwen: ratio > 200)
            raise

    def _check_each_image(self, images: list):
        """Raise `InputError` naming the first image the image processor cannot process on its own."""
        for index, image in enumerate(images):
            try:
                self.image_processor(images=[image], return_tensors="pt")
            except ValueError as error:
                raise InputError(
                    f"image {index} ({image.width}x{image.height} pixels): {type(self.image_processor).__name__} "
                    f"cannot process it ({error})."
                ) from None

    def pair(self, prompts, images: list) -> tuple[list[str], list]:
        """Element-wise pairing; a single prompt is broadcast to every image. Never a cross product."""
        if isinstance(prompts, (str, bytes)):
            prompts = [prompts]
        elif isinstance(prompts, (Mapping, AbstractSet)) or not isinstance(prompts, Iterable):
            # A dict would pair its keys with the images, a set in no particular order; None is no prompt at all.
            raise InputError(
                f"prompts: expected a string (one prompt for all images) or a list of strings (one per image), got "
                f"{type(prompts).__name__}."
            )
        else:
            prompts = list(prompts)
        if len(prompts) == 1 and len(images) > 1:
            prompts = prompts * len(images)
        if len(prompts) != len(images) or not images:
            raise InputError(
                f"Got {len(prompts)} prompts and {len(images)} images: pass one prompt per image, or one prompt "
                "for all images."
            )
        return [self.check_prompt(prompt, index) for index, prompt in enumerate(prompts)], images

    def check_prompt(self, prompt, index: int = 0, *, name: str | None = None) -> str:
        """`prompt` as a string the reward model can read; `InputError` naming it (`name`, default `prompt {index}`)
        when it is not text, not valid UTF-8, or holds one of the tokenizer's special tokens."""
        name = name or f"prompt {index}"
        if isinstance(prompt, bytes):
            try:
                prompt = prompt.decode("utf-8")
            except UnicodeDecodeError as error:
                raise InputError(f"{name}: not valid UTF-8 ({error}).") from None
        if not isinstance(prompt, str):
            raise InputError(f"{name}: expected a string, got {type(prompt).__name__}.")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as error:
            raise InputError(f"{name}: contains characters that are not valid Unicode ({error}).") from None
        for token in self._special_tokens:
            if token in prompt:
                raise InputError(f"{name}: contains the tokenizer's special token {token!r}.")
        return prompt

    def truncate_prompt(self, prompt: str, index: int = 0, *, name: str | None = None) -> str:
        """Cut `prompt` to at most `max_prompt_tokens` tokens, logging a warning that names it (`name`, default
        `prompt {index}`). The result re-tokenizes within the limit, so truncating it again changes nothing."""
        token_ids = self._prompt_token_ids(prompt)
        if len(token_ids) <= self.max_prompt_tokens:
            return prompt
        logger.warning(
            "%s has %d tokens; truncated to max_prompt_tokens=%d.",
            name or f"prompt {index}",
            len(token_ids),
            self.max_prompt_tokens,
        )
        kept = token_ids[: self.max_prompt_tokens]
        text = self._decode(kept)
        # A cut inside a multi-byte character decodes to U+FFFD, which is not in the prompt and may re-tokenize
        # longer than the bytes it replaced: back off to the last whole character.
        while kept and not self._is_clean_cut(text, prompt):
            kept = kept[:-1]
            text = self._decode(kept)
        return text

    def _prompt_token_ids(self, prompt: str) -> list[int]:
        with tokenizer_lock(self.tokenizer):
            return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def _decode(self, token_ids: list[int]) -> str:
        with tokenizer_lock(self.tokenizer):
            return self.tokenizer.decode(token_ids)

    def _is_clean_cut(self, text: str, prompt: str) -> bool:
        """Whether `text`, a truncation of `prompt`, fits in `max_prompt_tokens` and ends on a whole character."""
        cut_character = text.endswith("\ufffd") and not prompt.startswith(text)
        return not cut_character and len(self._prompt_token_ids(text)) <= self.max_prompt_tokens

    def build_text(self, prompt: str) -> str:
        """The text the reward model reads for one prompt; its last token is the reward token."""
        if self.prompt_template is not None:
            eos = self.tokenizer.eos_token or ""
            return self.prompt_template.format(image=self.vlm_processor.image_token, prompt=prompt, eos=eos)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = self.vlm_processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        # The user turn ends with the end-of-turn token: that token is the reward token, not the newline after it.
        return text.rstrip()

    @property
    def model_input_names(self) -> list[str]:
        return self.vlm_processor.model_input_names


def _model_type_of(processor_class: type[ProcessorMixin]) -> str:
    """The supported VLM `model_type` whose transformers processor is `processor_class`."""
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    for model_type in supported_model_types():
        if PROCESSOR_MAPPING_NAMES.get(model_type) == processor_class.__name__:
            return model_type
    raise ValueError(
        f"{processor_class.__name__} is not the processor of a supported VLM family ({', '.join(supported_model_types())})."
    )


LlavaRewardProcessor.register_for_auto_class()

__all__ = ["LlavaRewardProcessor"]
