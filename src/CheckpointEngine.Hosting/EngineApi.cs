namespace CheckpointEngine.Hosting;

/// <summary>Which HTTP surface the inference engine offers for being told to receive an update.</summary>
public enum EngineApi
{
    /// <summary>vLLM's <c>POST /collective_rpc</c> with <c>{"method":"update_weights_from_ipc","args":[{device_id: ticket}]}</c>; ready when <c>/health</c> answers.</summary>
    Vllm,

    /// <summary>SGLang's checkpoint-engine endpoint, <c>POST /update_weights_from_ipc</c> with <c>{"zmq_handles":{device_id: ticket},"flush_cache":true,"weight_version":checkpoint}</c>;
    /// ready when <c>/ping</c> answers (a server started with <c>--wait-for-initial-weights</c> is not healthy before its first update).</summary>
    Sglang,
}
