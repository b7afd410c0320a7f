/**
 * A small typed client for the Longtail gateway (Recommend, Feedback, ExplainRecommendation).
 *
 * The service definition is loaded at run time from the repository's protos/ with
 * @grpc/proto-loader, and the TypeScript types in src/generated/ are generated from the same files
 * (`npm run generate`), so both follow the contract. Every call carries a deadline and, when one is
 * configured, the bearer token; failures become `LongtailError` with the gRPC code and the
 * google.rpc.ErrorInfo reason the services attach (e.g. "K_OUT_OF_RANGE").
 *
 *   const client = new GatewayClient({ target: "127.0.0.1:50050", token, deadlineMs: 2000 });
 *   const answer = await client.recommend({ userId: "u1", k: 10 });
 */

import * as fs from "node:fs";
import * as path from "node:path";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import * as protobuf from "protobufjs";

import type { ProtoGrpcType } from "./generated/gateway_service";
import type { ExplainRecommendationResponse__Output } from "./generated/longtail/gateway/v1/ExplainRecommendationResponse";
import type { FeedbackRequest } from "./generated/longtail/gateway/v1/FeedbackRequest";
import type { FeedbackResponse__Output } from "./generated/longtail/gateway/v1/FeedbackResponse";
import type { GatewayServiceClient } from "./generated/longtail/gateway/v1/GatewayService";
import type { RecommendRequest } from "./generated/longtail/gateway/v1/RecommendRequest";
import type { RecommendResponse__Output } from "./generated/longtail/gateway/v1/RecommendResponse";

export type { PolicySpec } from "./generated/longtail/common/v1/PolicySpec";
export type { RecommendRequest } from "./generated/longtail/gateway/v1/RecommendRequest";
export type { RecommendResponse__Output as RecommendResponse } from "./generated/longtail/gateway/v1/RecommendResponse";
export type { RecommendedItem__Output as RecommendedItem } from "./generated/longtail/gateway/v1/RecommendedItem";
export type { FeedbackRequest } from "./generated/longtail/gateway/v1/FeedbackRequest";
export type { ExplainRecommendationResponse__Output as ExplainRecommendationResponse } from "./generated/longtail/gateway/v1/ExplainRecommendationResponse";
export type { ProtoGrpcType } from "./generated/gateway_service";

/** The gateway's proto file, relative to the protos root. */
export const GATEWAY_PROTO = "longtail/gateway/v1/gateway_service.proto";

/** Same conversions the generated types assume (see the "generate" script). */
export const LOADER_OPTIONS: protoLoader.Options = {
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
};

export interface ClientOptions {
  /** host:port of the gateway. */
  target: string;
  /** Bearer token, sent as `authorization: Bearer <token>` on every call. */
  token?: string;
  /** PEM CA certificate: connect with TLS (the server's certificate must name the target host). */
  tlsCa?: Buffer;
  /** Deadline of each call unless the call sets its own (milliseconds, default 2000). */
  deadlineMs?: number;
  /** Folder holding longtail/…/*.proto (default: $LONGTAIL_PROTOS_DIR, ./protos, ../../protos). */
  protosDir?: string;
}

export interface CallOptions {
  deadlineMs?: number;
}

/** A failed call: the gRPC status code and, when the service sent one, the ErrorInfo reason. */
export class LongtailError extends Error {
  constructor(
    readonly code: grpc.status,
    readonly details: string,
    readonly reason?: string,
    readonly metadata: Record<string, string> = {},
  ) {
    super(`${grpc.status[code]}${reason ? ` (${reason})` : ""}: ${details}`);
    this.name = "LongtailError";
  }
}

// google.rpc.Status and ErrorInfo, enough to read the `grpc-status-details-bin` trailer.
const RPC_TYPES = new protobuf.Root();
RPC_TYPES.define("google.protobuf").add(
  new protobuf.Type("Any")
    .add(new protobuf.Field("type_url", 1, "string"))
    .add(new protobuf.Field("value", 2, "bytes")),
);
RPC_TYPES.define("google.rpc")
  .add(
    new protobuf.Type("Status")
      .add(new protobuf.Field("code", 1, "int32"))
      .add(new protobuf.Field("message", 2, "string"))
      .add(new protobuf.Field("details", 3, "google.protobuf.Any", "repeated")),
  )
  .add(
    new protobuf.Type("ErrorInfo")
      .add(new protobuf.Field("reason", 1, "string"))
      .add(new protobuf.Field("domain", 2, "string"))
      .add(new protobuf.MapField("metadata", 3, "string", "string")),
  );
const STATUS = RPC_TYPES.lookupType("google.rpc.Status");
const ERROR_INFO = RPC_TYPES.lookupType("google.rpc.ErrorInfo");
const ERROR_INFO_URL = "type.googleapis.com/google.rpc.ErrorInfo";

interface ErrorInfo {
  reason: string;
  domain: string;
  metadata: Record<string, string>;
}

/** The ErrorInfo in a failed call's `grpc-status-details-bin` trailer, if any. */
export function errorInfo(error: grpc.ServiceError): ErrorInfo | undefined {
  const raw = error.metadata?.get("grpc-status-details-bin")[0];
  if (!raw || typeof raw === "string") return undefined;
  const status = STATUS.toObject(STATUS.decode(raw), { defaults: true }) as {
    details: { type_url: string; value: Uint8Array }[];
  };
  const detail = status.details.find((d) => d.type_url === ERROR_INFO_URL);
  if (!detail) return undefined;
  return ERROR_INFO.toObject(ERROR_INFO.decode(detail.value), { defaults: true }) as ErrorInfo;
}

/** Encodes a google.rpc.Status carrying an ErrorInfo (for fakes and tests of callers). */
export function encodeStatusDetails(code: grpc.status, message: string, info: ErrorInfo): Buffer {
  const any = { type_url: ERROR_INFO_URL, value: ERROR_INFO.encode(ERROR_INFO.create(info)).finish() };
  return Buffer.from(STATUS.encode(STATUS.create({ code, message, details: [any] })).finish());
}

export function resolveProtosDir(explicit?: string): string {
  const candidates = [
    explicit,
    process.env.LONGTAIL_PROTOS_DIR,
    path.resolve(__dirname, "..", "..", "protos"), // a packed copy (clients/node/protos)
    path.resolve(__dirname, "..", "..", "..", "..", "protos"), // the repository's protos/
  ];
  for (const candidate of candidates) {
    if (candidate && fs.existsSync(path.join(candidate, GATEWAY_PROTO))) return candidate;
  }
  throw new Error(`cannot find ${GATEWAY_PROTO}; set LONGTAIL_PROTOS_DIR`);
}

/** The package definition of every proto the gateway needs, loaded from `protosDir`. */
export function loadGatewayProto(protosDir?: string): ProtoGrpcType {
  const root = resolveProtosDir(protosDir);
  const definition = protoLoader.loadSync(GATEWAY_PROTO, { ...LOADER_OPTIONS, includeDirs: [root] });
  return grpc.loadPackageDefinition(definition) as unknown as ProtoGrpcType;
}

// Retry UNAVAILABLE a couple of times, as the Python client does (a retried Recommend with the
// same request_id is idempotent; without one the gateway makes one per attempt).
const SERVICE_CONFIG = JSON.stringify({
  methodConfig: [
    {
      name: [{ service: "longtail.gateway.v1.GatewayService" }],
      retryPolicy: {
        maxAttempts: 3,
        initialBackoff: "0.05s",
        maxBackoff: "0.5s",
        backoffMultiplier: 2,
        retryableStatusCodes: ["UNAVAILABLE"],
      },
    },
  ],
});

export class GatewayClient {
  private readonly stub: GatewayServiceClient;
  private readonly deadlineMs: number;
  private readonly token?: string;

  constructor(options: ClientOptions) {
    const proto = loadGatewayProto(options.protosDir);
    const credentials = options.tlsCa
      ? grpc.credentials.createSsl(options.tlsCa)
      : grpc.credentials.createInsecure();
    this.stub = new proto.longtail.gateway.v1.GatewayService(options.target, credentials, {
      "grpc.service_config": SERVICE_CONFIG,
      "grpc.enable_retries": 1,
    });
    this.deadlineMs = options.deadlineMs ?? 2000;
    this.token = options.token;
  }

  recommend(request: RecommendRequest, options: CallOptions = {}): Promise<RecommendResponse__Output> {
    return this.unary((m, o, cb) => this.stub.recommend(request, m, o, cb), options);
  }

  feedback(request: FeedbackRequest, options: CallOptions = {}): Promise<FeedbackResponse__Output> {
    return this.unary((m, o, cb) => this.stub.feedback(request, m, o, cb), options);
  }

  explain(requestId: string, options: CallOptions = {}): Promise<ExplainRecommendationResponse__Output> {
    return this.unary((m, o, cb) => this.stub.explainRecommendation({ requestId }, m, o, cb), options);
  }

  /** Resolves once connected (or rejects at the deadline): fail fast at start-up. */
  waitForReady(deadlineMs = this.deadlineMs): Promise<void> {
    return new Promise((resolve, reject) =>
      this.stub.waitForReady(Date.now() + deadlineMs, (error) => (error ? reject(error) : resolve())),
    );
  }

  close(): void {
    this.stub.close();
  }

  private unary<T>(
    call: (metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<T>) => unknown,
    options: CallOptions,
  ): Promise<T> {
    const metadata = new grpc.Metadata();
    if (this.token) metadata.set("authorization", `Bearer ${this.token}`);
    const deadline = Date.now() + (options.deadlineMs ?? this.deadlineMs);
    return new Promise<T>((resolve, reject) => {
      call(metadata, { deadline }, (error, response) => {
        if (error) {
          const info = errorInfo(error);
          reject(new LongtailError(error.code, error.details, info?.reason, info?.metadata));
        } else if (response === undefined) {
          reject(new LongtailError(grpc.status.INTERNAL, "empty response"));
        } else {
          resolve(response);
        }
      });
    });
  }
}
