from promptclimb.api.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FeaturesSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEATURES_SOURCE_UNSPECIFIED: _ClassVar[FeaturesSource]
    FEATURES_SOURCE_COMPUTED: _ClassVar[FeaturesSource]
    FEATURES_SOURCE_CACHE: _ClassVar[FeaturesSource]
    FEATURES_SOURCE_PROVIDED: _ClassVar[FeaturesSource]
FEATURES_SOURCE_UNSPECIFIED: FeaturesSource
FEATURES_SOURCE_COMPUTED: FeaturesSource
FEATURES_SOURCE_CACHE: FeaturesSource
FEATURES_SOURCE_PROVIDED: FeaturesSource

class EvaluatePromptsRequest(_message.Message):
    __slots__ = ("dataset", "split", "templates", "per_class", "per_image")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    PER_IMAGE_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    split: str
    templates: _containers.RepeatedScalarFieldContainer[str]
    per_class: bool
    per_image: bool
    def __init__(self, dataset: _Optional[str] = ..., split: _Optional[str] = ..., templates: _Optional[_Iterable[str]] = ..., per_class: _Optional[bool] = ..., per_image: _Optional[bool] = ...) -> None: ...

class TemplateError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class TemplateScore(_message.Message):
    __slots__ = ("template", "accuracy", "correct", "total", "per_class_accuracy", "error", "loss", "per_image_correct", "per_image_loss")
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    PER_CLASS_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    PER_IMAGE_CORRECT_FIELD_NUMBER: _ClassVar[int]
    PER_IMAGE_LOSS_FIELD_NUMBER: _ClassVar[int]
    template: str
    accuracy: float
    correct: int
    total: int
    per_class_accuracy: _containers.RepeatedScalarFieldContainer[float]
    error: TemplateError
    loss: float
    per_image_correct: bytes
    per_image_loss: bytes
    def __init__(self, template: _Optional[str] = ..., accuracy: _Optional[float] = ..., correct: _Optional[int] = ..., total: _Optional[int] = ..., per_class_accuracy: _Optional[_Iterable[float]] = ..., error: _Optional[_Union[TemplateError, _Mapping]] = ..., loss: _Optional[float] = ..., per_image_correct: _Optional[bytes] = ..., per_image_loss: _Optional[bytes] = ...) -> None: ...

class EvaluatePromptsResponse(_message.Message):
    __slots__ = ("scores", "class_names", "compute_seconds")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedCompositeFieldContainer[TemplateScore]
    class_names: _containers.RepeatedScalarFieldContainer[str]
    compute_seconds: float
    def __init__(self, scores: _Optional[_Iterable[_Union[TemplateScore, _Mapping]]] = ..., class_names: _Optional[_Iterable[str]] = ..., compute_seconds: _Optional[float] = ...) -> None: ...

class EvaluateEnsembleRequest(_message.Message):
    __slots__ = ("dataset", "split", "templates", "per_class")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    split: str
    templates: _containers.RepeatedScalarFieldContainer[str]
    per_class: bool
    def __init__(self, dataset: _Optional[str] = ..., split: _Optional[str] = ..., templates: _Optional[_Iterable[str]] = ..., per_class: _Optional[bool] = ...) -> None: ...

class EvaluateEnsembleResponse(_message.Message):
    __slots__ = ("score", "class_names")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    score: TemplateScore
    class_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, score: _Optional[_Union[TemplateScore, _Mapping]] = ..., class_names: _Optional[_Iterable[str]] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SplitInfo(_message.Message):
    __slots__ = ("name", "num_images", "features_source", "cache_error")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUM_IMAGES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_SOURCE_FIELD_NUMBER: _ClassVar[int]
    CACHE_ERROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    num_images: int
    features_source: FeaturesSource
    cache_error: str
    def __init__(self, name: _Optional[str] = ..., num_images: _Optional[int] = ..., features_source: _Optional[_Union[FeaturesSource, str]] = ..., cache_error: _Optional[str] = ...) -> None: ...

class Dataset(_message.Message):
    __slots__ = ("id", "class_names", "splits", "source", "ready", "images_done", "images_total", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    SPLITS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    IMAGES_DONE_FIELD_NUMBER: _ClassVar[int]
    IMAGES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    splits: _containers.RepeatedCompositeFieldContainer[SplitInfo]
    source: str
    ready: bool
    images_done: int
    images_total: int
    error: str
    def __init__(self, id: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., splits: _Optional[_Iterable[_Union[SplitInfo, _Mapping]]] = ..., source: _Optional[str] = ..., ready: _Optional[bool] = ..., images_done: _Optional[int] = ..., images_total: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets",)
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[Dataset]
    def __init__(self, datasets: _Optional[_Iterable[_Union[Dataset, _Mapping]]] = ...) -> None: ...

class ImageFolderSource(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class CoopSource(_message.Message):
    __slots__ = ("split_json", "image_root", "shots", "seed")
    SPLIT_JSON_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ROOT_FIELD_NUMBER: _ClassVar[int]
    SHOTS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    split_json: str
    image_root: str
    shots: int
    seed: int
    def __init__(self, split_json: _Optional[str] = ..., image_root: _Optional[str] = ..., shots: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class ArraySource(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class RegisterDatasetRequest(_message.Message):
    __slots__ = ("id", "image_folder", "coop", "array")
    ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FOLDER_FIELD_NUMBER: _ClassVar[int]
    COOP_FIELD_NUMBER: _ClassVar[int]
    ARRAY_FIELD_NUMBER: _ClassVar[int]
    id: str
    image_folder: ImageFolderSource
    coop: CoopSource
    array: ArraySource
    def __init__(self, id: _Optional[str] = ..., image_folder: _Optional[_Union[ImageFolderSource, _Mapping]] = ..., coop: _Optional[_Union[CoopSource, _Mapping]] = ..., array: _Optional[_Union[ArraySource, _Mapping]] = ...) -> None: ...

class RegisterDatasetResponse(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: Dataset
    def __init__(self, dataset: _Optional[_Union[Dataset, _Mapping]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetModelInfoResponse(_message.Message):
    __slots__ = ("model_name", "pretrained", "device", "precision", "context_length", "embed_dim", "text_truncation_exact", "max_templates_per_request", "model_id")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    PRETRAINED_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    EMBED_DIM_FIELD_NUMBER: _ClassVar[int]
    TEXT_TRUNCATION_EXACT_FIELD_NUMBER: _ClassVar[int]
    MAX_TEMPLATES_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    pretrained: str
    device: str
    precision: str
    context_length: int
    embed_dim: int
    text_truncation_exact: bool
    max_templates_per_request: int
    model_id: str
    def __init__(self, model_name: _Optional[str] = ..., pretrained: _Optional[str] = ..., device: _Optional[str] = ..., precision: _Optional[str] = ..., context_length: _Optional[int] = ..., embed_dim: _Optional[int] = ..., text_truncation_exact: _Optional[bool] = ..., max_templates_per_request: _Optional[int] = ..., model_id: _Optional[str] = ...) -> None: ...

class DescriptionSet(_message.Message):
    __slots__ = ("name", "classes", "template")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    classes: _containers.RepeatedCompositeFieldContainer[_common_pb2.ClassDescriptions]
    template: str
    def __init__(self, name: _Optional[str] = ..., classes: _Optional[_Iterable[_Union[_common_pb2.ClassDescriptions, _Mapping]]] = ..., template: _Optional[str] = ...) -> None: ...

class EvaluateDescriptionsRequest(_message.Message):
    __slots__ = ("dataset", "split", "sets", "per_class", "top_confusions", "drop_overlong_texts")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    SETS_FIELD_NUMBER: _ClassVar[int]
    PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    TOP_CONFUSIONS_FIELD_NUMBER: _ClassVar[int]
    DROP_OVERLONG_TEXTS_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    split: str
    sets: _containers.RepeatedCompositeFieldContainer[DescriptionSet]
    per_class: bool
    top_confusions: int
    drop_overlong_texts: bool
    def __init__(self, dataset: _Optional[str] = ..., split: _Optional[str] = ..., sets: _Optional[_Iterable[_Union[DescriptionSet, _Mapping]]] = ..., per_class: _Optional[bool] = ..., top_confusions: _Optional[int] = ..., drop_overlong_texts: _Optional[bool] = ...) -> None: ...

class DescriptionSetScore(_message.Message):
    __slots__ = ("name", "accuracy", "correct", "total", "per_class_accuracy", "error", "loss", "confusions", "num_texts", "dropped")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    PER_CLASS_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    CONFUSIONS_FIELD_NUMBER: _ClassVar[int]
    NUM_TEXTS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    name: str
    accuracy: float
    correct: int
    total: int
    per_class_accuracy: _containers.RepeatedScalarFieldContainer[float]
    error: TemplateError
    loss: float
    confusions: _containers.RepeatedCompositeFieldContainer[_common_pb2.Confusion]
    num_texts: int
    dropped: _containers.RepeatedCompositeFieldContainer[_common_pb2.ClassDescriptions]
    def __init__(self, name: _Optional[str] = ..., accuracy: _Optional[float] = ..., correct: _Optional[int] = ..., total: _Optional[int] = ..., per_class_accuracy: _Optional[_Iterable[float]] = ..., error: _Optional[_Union[TemplateError, _Mapping]] = ..., loss: _Optional[float] = ..., confusions: _Optional[_Iterable[_Union[_common_pb2.Confusion, _Mapping]]] = ..., num_texts: _Optional[int] = ..., dropped: _Optional[_Iterable[_Union[_common_pb2.ClassDescriptions, _Mapping]]] = ...) -> None: ...

class EvaluateDescriptionsResponse(_message.Message):
    __slots__ = ("scores", "class_names", "compute_seconds")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedCompositeFieldContainer[DescriptionSetScore]
    class_names: _containers.RepeatedScalarFieldContainer[str]
    compute_seconds: float
    def __init__(self, scores: _Optional[_Iterable[_Union[DescriptionSetScore, _Mapping]]] = ..., class_names: _Optional[_Iterable[str]] = ..., compute_seconds: _Optional[float] = ...) -> None: ...
