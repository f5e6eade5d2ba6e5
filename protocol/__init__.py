"""The Mosaic wire protocol: messages, framing, signing. Sans-IO.

Nothing here touches sockets, files, trio, libp2p or torch; it is bytes in,
messages (or typed errors) out.  See docs/protocol.md.
"""

from .base import PROTOCOL_VERSION, Message, Params
from .codec import MAX_MESSAGE_SIZE, decode, encode, trace_digest
from .errors import (
    BadSignature,
    DecodeError,
    ExpiredRecord,
    InvalidPeerId,
    InvalidValue,
    MessageTooLarge,
    MissingField,
    ProtocolError,
    ReplayedRecord,
    UnknownMessageType,
    UnsupportedVersion,
    WrongType,
)
from .framing import FrameDecoder, encode_frame
from .identity import Identity, peer_id_from_public_key, public_key_from_peer_id, verify_signature
from .messages import (
    ALL_MESSAGE_TYPES,
    GREEDY_TEMPERATURE,
    AdapterInfo,
    Cancel,
    CapabilityRecord,
    ChatMessage,
    ErrorCode,
    ErrorMessage,
    EvalScore,
    FinishReason,
    GenerateEvent,
    GenerateRequest,
    GenerateResult,
    NextTokenRequest,
    NextTokenResult,
    Provenance,
    QueryChunk,
    QueryRequest,
    QueryResult,
    Queued,
    RecordBatch,
    SamplingParams,
    ScoreRequest,
    ScoreResult,
    SessionAppend,
    SessionClose,
    SessionClosed,
    SessionNext,
    SessionOpen,
    SignedRecord,
    TokenChunk,
    Usage,
    is_error_code,
)
from .receipts import Receipt, SignedReceipt, open_receipt, sign_receipt, verify_receipt
from .records import Accepted, RecordBook, sign_record, verify_record
from .trace import MAX_OUTPUT, MAX_STEPS, Trace, TraceStep, digest

# libp2p protocol ids spoken by Mosaic nodes (docs/protocol.md).
CAPABILITIES_TOPIC = "/mosaic/capabilities/1"
DHT_NAMESPACE = "mosaic-cap"
INFER_PROTOCOL = "/mosaic/infer/1"
QUERY_PROTOCOL = "/mosaic/query/1"
RECORD_PROTOCOL = "/mosaic/record/1"

__all__ = [name for name in dir() if not name.startswith("_")]
