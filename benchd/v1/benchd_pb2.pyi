from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ThrottleState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    THROTTLE_STATE_UNKNOWN: _ClassVar[ThrottleState]
    THROTTLE_STATE_NOT_THROTTLED: _ClassVar[ThrottleState]
    THROTTLE_STATE_THROTTLED: _ClassVar[ThrottleState]

class GraphOptimization(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRAPH_OPTIMIZATION_UNSPECIFIED: _ClassVar[GraphOptimization]
    GRAPH_OPTIMIZATION_DISABLE: _ClassVar[GraphOptimization]
    GRAPH_OPTIMIZATION_BASIC: _ClassVar[GraphOptimization]
    GRAPH_OPTIMIZATION_EXTENDED: _ClassVar[GraphOptimization]
    GRAPH_OPTIMIZATION_ALL: _ClassVar[GraphOptimization]

class OutputEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_ENCODING_UNSPECIFIED: _ClassVar[OutputEncoding]
    OUTPUT_ENCODING_MASK: _ClassVar[OutputEncoding]
    OUTPUT_ENCODING_RAW: _ClassVar[OutputEncoding]
THROTTLE_STATE_UNKNOWN: ThrottleState
THROTTLE_STATE_NOT_THROTTLED: ThrottleState
THROTTLE_STATE_THROTTLED: ThrottleState
GRAPH_OPTIMIZATION_UNSPECIFIED: GraphOptimization
GRAPH_OPTIMIZATION_DISABLE: GraphOptimization
GRAPH_OPTIMIZATION_BASIC: GraphOptimization
GRAPH_OPTIMIZATION_EXTENDED: GraphOptimization
GRAPH_OPTIMIZATION_ALL: GraphOptimization
OUTPUT_ENCODING_UNSPECIFIED: OutputEncoding
OUTPUT_ENCODING_MASK: OutputEncoding
OUTPUT_ENCODING_RAW: OutputEncoding

class Device(_message.Message):
    __slots__ = ("name", "device_class")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEVICE_CLASS_FIELD_NUMBER: _ClassVar[int]
    name: str
    device_class: str
    def __init__(self, name: _Optional[str] = ..., device_class: _Optional[str] = ...) -> None: ...

class HasModelRequest(_message.Message):
    __slots__ = ("model_sha256",)
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    model_sha256: str
    def __init__(self, model_sha256: _Optional[str] = ...) -> None: ...

class HasModelResponse(_message.Message):
    __slots__ = ("present", "size_bytes")
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    present: bool
    size_bytes: int
    def __init__(self, present: _Optional[bool] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("model_sha256", "size_bytes", "filename")
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    model_sha256: str
    size_bytes: int
    filename: str
    def __init__(self, model_sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., filename: _Optional[str] = ...) -> None: ...

class UploadModelRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UploadModelResponse(_message.Message):
    __slots__ = ("model_sha256", "size_bytes", "already_cached", "received_bytes")
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ALREADY_CACHED_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    model_sha256: str
    size_bytes: int
    already_cached: bool
    received_bytes: int
    def __init__(self, model_sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., already_cached: _Optional[bool] = ..., received_bytes: _Optional[int] = ...) -> None: ...

class InputShape(_message.Message):
    __slots__ = ("name", "dims")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    dims: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dims: _Optional[_Iterable[int]] = ...) -> None: ...

class BenchmarkRequest(_message.Message):
    __slots__ = ("model_sha256", "warmup_runs", "runs", "min_duration_s", "intra_op_threads", "batch_size", "graph_optimization", "input_shapes", "return_samples", "reject_if_busy", "target_rel_ci", "max_runs", "max_duration_s")
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    WARMUP_RUNS_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    MIN_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    INTRA_OP_THREADS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    GRAPH_OPTIMIZATION_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPES_FIELD_NUMBER: _ClassVar[int]
    RETURN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    REJECT_IF_BUSY_FIELD_NUMBER: _ClassVar[int]
    TARGET_REL_CI_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNS_FIELD_NUMBER: _ClassVar[int]
    MAX_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    model_sha256: str
    warmup_runs: int
    runs: int
    min_duration_s: float
    intra_op_threads: int
    batch_size: int
    graph_optimization: GraphOptimization
    input_shapes: _containers.RepeatedCompositeFieldContainer[InputShape]
    return_samples: bool
    reject_if_busy: bool
    target_rel_ci: float
    max_runs: int
    max_duration_s: float
    def __init__(self, model_sha256: _Optional[str] = ..., warmup_runs: _Optional[int] = ..., runs: _Optional[int] = ..., min_duration_s: _Optional[float] = ..., intra_op_threads: _Optional[int] = ..., batch_size: _Optional[int] = ..., graph_optimization: _Optional[_Union[GraphOptimization, str]] = ..., input_shapes: _Optional[_Iterable[_Union[InputShape, _Mapping]]] = ..., return_samples: _Optional[bool] = ..., reject_if_busy: _Optional[bool] = ..., target_rel_ci: _Optional[float] = ..., max_runs: _Optional[int] = ..., max_duration_s: _Optional[float] = ...) -> None: ...

class TensorInfo(_message.Message):
    __slots__ = ("name", "element_type", "graph_dims", "dims")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ELEMENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    GRAPH_DIMS_FIELD_NUMBER: _ClassVar[int]
    DIMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    element_type: str
    graph_dims: _containers.RepeatedScalarFieldContainer[str]
    dims: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., element_type: _Optional[str] = ..., graph_dims: _Optional[_Iterable[str]] = ..., dims: _Optional[_Iterable[int]] = ...) -> None: ...

class BenchmarkResponse(_message.Message):
    __slots__ = ("model_sha256", "device", "runs", "warmup_runs", "latency_ms_mean", "latency_ms_std", "latency_ms_min", "latency_ms_p50", "latency_ms_p90", "latency_ms_p95", "latency_ms_p99", "latency_ms_max", "latency_cv", "session_create_ms", "first_run_ms", "timed_total_s", "peak_rss_bytes", "rss_before_bytes", "cpu_temperature_c_before", "cpu_temperature_c_after", "cpu_freq_mhz_before", "cpu_freq_mhz_after", "throttled", "throttled_raw_before", "throttled_raw_after", "onnxruntime_version", "intra_op_threads", "batch_size", "inputs", "timing_start_unix_ns", "timing_end_unix_ns", "queue_wait_ms", "samples_ms", "hit_max_duration", "benchd_version", "graph_optimization", "upload_bytes_during_window", "governor", "latency_ms_p50_ci_low", "latency_ms_p50_ci_high", "latency_ms_p90_ci_low", "latency_ms_p90_ci_high", "p50_rel_ci", "target_rel_ci", "precision_met", "latency_ms_p50_first_tenth", "latency_ms_p50_last_tenth")
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_RUNS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_MEAN_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_STD_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_MIN_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_P50_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_P90_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_P95_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_P99_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_MAX_FIELD_NUMBER: _ClassVar[int]
    LATENCY_CV_FIELD_NUMBER: _ClassVar[int]
    SESSION_CREATE_MS_FIELD_NUMBER: _ClassVar[int]
    FIRST_RUN_MS_FIELD_NUMBER: _ClassVar[int]
    TIMED_TOTAL_S_FIELD_NUMBER: _ClassVar[int]
    PEAK_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    RSS_BEFORE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CPU_TEMPERATURE_C_BEFORE_FIELD_NUMBER: _ClassVar[int]
    CPU_TEMPERATURE_C_AFTER_FIELD_NUMBER: _ClassVar[int]
    CPU_FREQ_MHZ_BEFORE_FIELD_NUMBER: _ClassVar[int]
    CPU_FREQ_MHZ_AFTER_FIELD_NUMBER: _ClassVar[int]
    THROTTLED_FIELD_NUMBER: _ClassVar[int]
    THROTTLED_RAW_BEFORE_FIELD_NUMBER: _ClassVar[int]
    THROTTLED_RAW_AFTER_FIELD_NUMBER: _ClassVar[int]
    ONNXRUNTIME_VERSION_FIELD_NUMBER: _ClassVar[int]
    INTRA_OP_THREADS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TIMING_START_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    TIMING_END_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_MS_FIELD_NUMBER: _ClassVar[int]
    HIT_MAX_DURATION_FIELD_NUMBER: _ClassVar[int]
    BENCHD_VERSION_FIELD_NUMBER: _ClassVar[int]
    GRAPH_OPTIMIZATION_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_BYTES_DURING_WINDOW_FIELD_NUMBER: _ClassVar[int]
    GOVERNOR_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_P50_CI_LOW_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_P50_CI_HIGH_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_P90_CI_LOW_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_P90_CI_HIGH_FIELD_NUMBER: _ClassVar[int]
    P50_REL_CI_FIELD_NUMBER: _ClassVar[int]
    TARGET_REL_CI_FIELD_NUMBER: _ClassVar[int]
    PRECISION_MET_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_P50_FIRST_TENTH_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_P50_LAST_TENTH_FIELD_NUMBER: _ClassVar[int]
    model_sha256: str
    device: Device
    runs: int
    warmup_runs: int
    latency_ms_mean: float
    latency_ms_std: float
    latency_ms_min: float
    latency_ms_p50: float
    latency_ms_p90: float
    latency_ms_p95: float
    latency_ms_p99: float
    latency_ms_max: float
    latency_cv: float
    session_create_ms: float
    first_run_ms: float
    timed_total_s: float
    peak_rss_bytes: int
    rss_before_bytes: int
    cpu_temperature_c_before: float
    cpu_temperature_c_after: float
    cpu_freq_mhz_before: float
    cpu_freq_mhz_after: float
    throttled: ThrottleState
    throttled_raw_before: str
    throttled_raw_after: str
    onnxruntime_version: str
    intra_op_threads: int
    batch_size: int
    inputs: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    timing_start_unix_ns: int
    timing_end_unix_ns: int
    queue_wait_ms: float
    samples_ms: _containers.RepeatedScalarFieldContainer[float]
    hit_max_duration: bool
    benchd_version: str
    graph_optimization: GraphOptimization
    upload_bytes_during_window: int
    governor: str
    latency_ms_p50_ci_low: float
    latency_ms_p50_ci_high: float
    latency_ms_p90_ci_low: float
    latency_ms_p90_ci_high: float
    p50_rel_ci: float
    target_rel_ci: float
    precision_met: bool
    latency_ms_p50_first_tenth: float
    latency_ms_p50_last_tenth: float
    def __init__(self, model_sha256: _Optional[str] = ..., device: _Optional[_Union[Device, _Mapping]] = ..., runs: _Optional[int] = ..., warmup_runs: _Optional[int] = ..., latency_ms_mean: _Optional[float] = ..., latency_ms_std: _Optional[float] = ..., latency_ms_min: _Optional[float] = ..., latency_ms_p50: _Optional[float] = ..., latency_ms_p90: _Optional[float] = ..., latency_ms_p95: _Optional[float] = ..., latency_ms_p99: _Optional[float] = ..., latency_ms_max: _Optional[float] = ..., latency_cv: _Optional[float] = ..., session_create_ms: _Optional[float] = ..., first_run_ms: _Optional[float] = ..., timed_total_s: _Optional[float] = ..., peak_rss_bytes: _Optional[int] = ..., rss_before_bytes: _Optional[int] = ..., cpu_temperature_c_before: _Optional[float] = ..., cpu_temperature_c_after: _Optional[float] = ..., cpu_freq_mhz_before: _Optional[float] = ..., cpu_freq_mhz_after: _Optional[float] = ..., throttled: _Optional[_Union[ThrottleState, str]] = ..., throttled_raw_before: _Optional[str] = ..., throttled_raw_after: _Optional[str] = ..., onnxruntime_version: _Optional[str] = ..., intra_op_threads: _Optional[int] = ..., batch_size: _Optional[int] = ..., inputs: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ..., timing_start_unix_ns: _Optional[int] = ..., timing_end_unix_ns: _Optional[int] = ..., queue_wait_ms: _Optional[float] = ..., samples_ms: _Optional[_Iterable[float]] = ..., hit_max_duration: _Optional[bool] = ..., benchd_version: _Optional[str] = ..., graph_optimization: _Optional[_Union[GraphOptimization, str]] = ..., upload_bytes_during_window: _Optional[int] = ..., governor: _Optional[str] = ..., latency_ms_p50_ci_low: _Optional[float] = ..., latency_ms_p50_ci_high: _Optional[float] = ..., latency_ms_p90_ci_low: _Optional[float] = ..., latency_ms_p90_ci_high: _Optional[float] = ..., p50_rel_ci: _Optional[float] = ..., target_rel_ci: _Optional[float] = ..., precision_met: _Optional[bool] = ..., latency_ms_p50_first_tenth: _Optional[float] = ..., latency_ms_p50_last_tenth: _Optional[float] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CachedModel(_message.Message):
    __slots__ = ("model_sha256", "size_bytes", "last_used_unix_ns")
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    model_sha256: str
    size_bytes: int
    last_used_unix_ns: int
    def __init__(self, model_sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., last_used_unix_ns: _Optional[int] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_model_bytes", "max_runs", "max_duration_s", "queue_capacity", "worker_memory_bytes", "max_predict_bytes", "max_predict_batch")
    MAX_MODEL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNS_FIELD_NUMBER: _ClassVar[int]
    MAX_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    QUEUE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    WORKER_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_PREDICT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_PREDICT_BATCH_FIELD_NUMBER: _ClassVar[int]
    max_model_bytes: int
    max_runs: int
    max_duration_s: float
    queue_capacity: int
    worker_memory_bytes: int
    max_predict_bytes: int
    max_predict_batch: int
    def __init__(self, max_model_bytes: _Optional[int] = ..., max_runs: _Optional[int] = ..., max_duration_s: _Optional[float] = ..., queue_capacity: _Optional[int] = ..., worker_memory_bytes: _Optional[int] = ..., max_predict_bytes: _Optional[int] = ..., max_predict_batch: _Optional[int] = ...) -> None: ...

class GetInfoResponse(_message.Message):
    __slots__ = ("device", "hostname", "cpu_model", "device_model", "cpu_cores", "architecture", "os", "kernel", "memory_total_bytes", "memory_available_bytes", "governor", "onnxruntime_version", "onnxruntime_providers", "benchd_version", "python_version", "cached_models", "cache_size_bytes", "cache_capacity_bytes", "limits", "ready", "cpu_temperature_c", "throttled", "emulated", "emulator", "host_cpu_model", "cpu_features")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    CPU_MODEL_FIELD_NUMBER: _ClassVar[int]
    DEVICE_MODEL_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_AVAILABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    GOVERNOR_FIELD_NUMBER: _ClassVar[int]
    ONNXRUNTIME_VERSION_FIELD_NUMBER: _ClassVar[int]
    ONNXRUNTIME_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    BENCHD_VERSION_FIELD_NUMBER: _ClassVar[int]
    PYTHON_VERSION_FIELD_NUMBER: _ClassVar[int]
    CACHED_MODELS_FIELD_NUMBER: _ClassVar[int]
    CACHE_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CACHE_CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    CPU_TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    THROTTLED_FIELD_NUMBER: _ClassVar[int]
    EMULATED_FIELD_NUMBER: _ClassVar[int]
    EMULATOR_FIELD_NUMBER: _ClassVar[int]
    HOST_CPU_MODEL_FIELD_NUMBER: _ClassVar[int]
    CPU_FEATURES_FIELD_NUMBER: _ClassVar[int]
    device: Device
    hostname: str
    cpu_model: str
    device_model: str
    cpu_cores: int
    architecture: str
    os: str
    kernel: str
    memory_total_bytes: int
    memory_available_bytes: int
    governor: str
    onnxruntime_version: str
    onnxruntime_providers: _containers.RepeatedScalarFieldContainer[str]
    benchd_version: str
    python_version: str
    cached_models: _containers.RepeatedCompositeFieldContainer[CachedModel]
    cache_size_bytes: int
    cache_capacity_bytes: int
    limits: Limits
    ready: bool
    cpu_temperature_c: float
    throttled: ThrottleState
    emulated: bool
    emulator: str
    host_cpu_model: str
    cpu_features: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, device: _Optional[_Union[Device, _Mapping]] = ..., hostname: _Optional[str] = ..., cpu_model: _Optional[str] = ..., device_model: _Optional[str] = ..., cpu_cores: _Optional[int] = ..., architecture: _Optional[str] = ..., os: _Optional[str] = ..., kernel: _Optional[str] = ..., memory_total_bytes: _Optional[int] = ..., memory_available_bytes: _Optional[int] = ..., governor: _Optional[str] = ..., onnxruntime_version: _Optional[str] = ..., onnxruntime_providers: _Optional[_Iterable[str]] = ..., benchd_version: _Optional[str] = ..., python_version: _Optional[str] = ..., cached_models: _Optional[_Iterable[_Union[CachedModel, _Mapping]]] = ..., cache_size_bytes: _Optional[int] = ..., cache_capacity_bytes: _Optional[int] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., ready: _Optional[bool] = ..., cpu_temperature_c: _Optional[float] = ..., throttled: _Optional[_Union[ThrottleState, str]] = ..., emulated: _Optional[bool] = ..., emulator: _Optional[str] = ..., host_cpu_model: _Optional[str] = ..., cpu_features: _Optional[_Iterable[str]] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("model_sha256", "input_dims", "input_data", "encoding", "logit_threshold", "intra_op_threads", "reject_if_busy")
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    INPUT_DIMS_FIELD_NUMBER: _ClassVar[int]
    INPUT_DATA_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    LOGIT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    INTRA_OP_THREADS_FIELD_NUMBER: _ClassVar[int]
    REJECT_IF_BUSY_FIELD_NUMBER: _ClassVar[int]
    model_sha256: str
    input_dims: _containers.RepeatedScalarFieldContainer[int]
    input_data: bytes
    encoding: OutputEncoding
    logit_threshold: float
    intra_op_threads: int
    reject_if_busy: bool
    def __init__(self, model_sha256: _Optional[str] = ..., input_dims: _Optional[_Iterable[int]] = ..., input_data: _Optional[bytes] = ..., encoding: _Optional[_Union[OutputEncoding, str]] = ..., logit_threshold: _Optional[float] = ..., intra_op_threads: _Optional[int] = ..., reject_if_busy: _Optional[bool] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("model_sha256", "device", "encoding", "output_dims", "output_data", "run_ms", "queue_wait_ms", "session_reused", "onnxruntime_version", "benchd_version")
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIMS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DATA_FIELD_NUMBER: _ClassVar[int]
    RUN_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    SESSION_REUSED_FIELD_NUMBER: _ClassVar[int]
    ONNXRUNTIME_VERSION_FIELD_NUMBER: _ClassVar[int]
    BENCHD_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_sha256: str
    device: Device
    encoding: OutputEncoding
    output_dims: _containers.RepeatedScalarFieldContainer[int]
    output_data: bytes
    run_ms: float
    queue_wait_ms: float
    session_reused: bool
    onnxruntime_version: str
    benchd_version: str
    def __init__(self, model_sha256: _Optional[str] = ..., device: _Optional[_Union[Device, _Mapping]] = ..., encoding: _Optional[_Union[OutputEncoding, str]] = ..., output_dims: _Optional[_Iterable[int]] = ..., output_data: _Optional[bytes] = ..., run_ms: _Optional[float] = ..., queue_wait_ms: _Optional[float] = ..., session_reused: _Optional[bool] = ..., onnxruntime_version: _Optional[str] = ..., benchd_version: _Optional[str] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("device", "ready", "busy", "queue_depth", "queue_capacity", "cpu_temperature_c", "cpu_freq_mhz", "throttled")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    BUSY_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    QUEUE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    CPU_TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    CPU_FREQ_MHZ_FIELD_NUMBER: _ClassVar[int]
    THROTTLED_FIELD_NUMBER: _ClassVar[int]
    device: Device
    ready: bool
    busy: bool
    queue_depth: int
    queue_capacity: int
    cpu_temperature_c: float
    cpu_freq_mhz: float
    throttled: ThrottleState
    def __init__(self, device: _Optional[_Union[Device, _Mapping]] = ..., ready: _Optional[bool] = ..., busy: _Optional[bool] = ..., queue_depth: _Optional[int] = ..., queue_capacity: _Optional[int] = ..., cpu_temperature_c: _Optional[float] = ..., cpu_freq_mhz: _Optional[float] = ..., throttled: _Optional[_Union[ThrottleState, str]] = ...) -> None: ...
