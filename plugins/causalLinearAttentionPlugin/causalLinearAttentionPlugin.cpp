#include "causalLinearAttentionPlugin.h"

#include "../kernels/tost_kernels.h"

using namespace nvinfer1;

namespace tost_edge
{
namespace plugin
{
namespace
{
// inputs: q, k, v, kv, k_sum; outputs: y, kv_out, k_sum_out
constexpr int32_t kIN = 5;
constexpr int32_t kOUT = 3;
constexpr int32_t kRANKS[kIN] = {4, 4, 4, 4, 3};
} // namespace

std::vector<PluginField> CausalLinearAttentionPlugin::fieldNames()
{
    return {PluginField("eps", nullptr, PluginFieldType::kFLOAT32, 1)};
}

CausalLinearAttentionPlugin* CausalLinearAttentionPlugin::fromFields(
    std::string const& name, PluginFieldCollection const* fc) noexcept
{
    float eps = 0.f;
    if (!readFloat(fc, kNAME, "eps", eps))
    {
        return nullptr;
    }
    if (!(eps > 0.f))
    {
        logError(std::string(kNAME) + ": eps expected > 0, got " + std::to_string(eps));
        return nullptr;
    }
    return new (std::nothrow) CausalLinearAttentionPlugin(name, eps);
}

IPluginV3* CausalLinearAttentionPlugin::clone() noexcept
{
    return new (std::nothrow) CausalLinearAttentionPlugin(mName, mEps);
}

int32_t CausalLinearAttentionPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != kIN || nbOutputs != kOUT)
    {
        return -1;
    }
    outputTypes[0] = inputTypes[2];
    outputTypes[1] = outputTypes[2] = DataType::kFLOAT;
    return 0;
}

int32_t CausalLinearAttentionPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*,
    int32_t, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder&) noexcept
{
    if (nbInputs != kIN || nbOutputs != kOUT)
    {
        return -1;
    }
    if (!checkRanks("CausalLinearAttention_TRT", inputs, kIN, kRANKS))
    {
        return -1;
    }
    outputs[0] = inputs[2];
    outputs[1] = inputs[3];
    outputs[2] = inputs[4];
    return 0;
}

bool CausalLinearAttentionPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs != kIN || nbOutputs != kOUT || pos < 0 || pos >= kIN + kOUT)
    {
        return false;
    }
    auto const& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    if (pos == 0)
    {
        return isFloatType(d.type);
    }
    if (pos == 1 || pos == 2 || pos == kIN)
    {
        return d.type == inOut[0].desc.type;
    }
    return d.type == DataType::kFLOAT;
}

int32_t CausalLinearAttentionPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*,
    void const* const* inputs, void* const* outputs, void*, cudaStream_t stream) noexcept
{
    auto const& q = inputDesc[0].dims;
    int const r = tost_causal_linear_attention_forward(inputs[0], inputs[1], inputs[2],
        static_cast<float const*>(inputs[3]), static_cast<float const*>(inputs[4]), outputs[0],
        static_cast<float*>(outputs[1]), static_cast<float*>(outputs[2]), q.d[0], q.d[1],
        static_cast<int32_t>(q.d[2]), static_cast<int32_t>(q.d[3]), static_cast<int32_t>(inputDesc[2].dims.d[3]), mEps,
        toKernelDtype(inputDesc[0].type), stream);
    if (r != TOST_OK)
    {
        logError(std::string("CausalLinearAttention_TRT: ") + tost_last_error());
        return -1;
    }
    return 0;
}

PluginFieldCollection const* CausalLinearAttentionPlugin::getFieldsToSerialize() noexcept
{
    mSerialized = {PluginField("eps", &mEps, PluginFieldType::kFLOAT32, 1)};
    return publish();
}

} // namespace plugin
} // namespace tost_edge
