// CausalTSSA_TRT: causal TSSA over a block of tokens with a carried fp32 state (see README.md).
#pragma once

#include "../common/pluginCommon.h"

namespace tost_edge
{
namespace plugin
{

class CausalTSSAPlugin : public PluginBase
{
public:
    static constexpr char const* kNAME = "CausalTSSA_TRT";
    static std::vector<nvinfer1::PluginField> fieldNames();
    static CausalTSSAPlugin* fromFields(std::string const& name, nvinfer1::PluginFieldCollection const* fc) noexcept;

    CausalTSSAPlugin(std::string name, int32_t numHeads, int32_t bounded)
        : PluginBase(std::move(name)), mNumHeads(numHeads), mBounded(bounded)
    {
    }

    char const* getPluginName() const noexcept override { return kNAME; }
    nvinfer1::IPluginV3* clone() noexcept override;
    int32_t getNbOutputs() const noexcept override { return 4; }
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType const* inputTypes,
        int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

    int32_t numHeads() const noexcept { return mNumHeads; }
    int32_t bounded() const noexcept { return mBounded; }

private:
    int32_t mNumHeads;
    int32_t mBounded;
};

} // namespace plugin
} // namespace tost_edge
