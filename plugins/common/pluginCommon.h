// Shared pieces of the tost-edge TensorRT plugins: identity, logging, field parsing and serialization.
#pragma once

#include "NvInferRuntime.h"

#include <cstdint>
#include <string>
#include <vector>

namespace tost_edge
{
namespace plugin
{

constexpr char const* kPLUGIN_VERSION = "1";
constexpr char const* kPLUGIN_NAMESPACE = "tost_edge";

//! Logs through the logger TensorRT hands the library in setLoggerFinder (silent before that).
void logError(std::string const& msg) noexcept;
void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;

//! Reads one scalar field; returns false (and logs, naming the plugin and field) when absent or mistyped.
bool readInt(nvinfer1::PluginFieldCollection const* fc, char const* plugin, char const* name, int32_t& out) noexcept;
bool readFloat(nvinfer1::PluginFieldCollection const* fc, char const* plugin, char const* name, float& out) noexcept;

//! True when input i has rank ranks[i] for every i < n; else logs the first that does not (naming the plugin).
bool checkRanks(char const* plugin, nvinfer1::DimsExprs const* inputs, int32_t n, int32_t const* ranks) noexcept;

bool isFloatType(nvinfer1::DataType t) noexcept;
int32_t toKernelDtype(nvinfer1::DataType t) noexcept;

//! Base of the three plugins: the capability plumbing IPluginV3 asks for, and serialization through fields.
class PluginBase : public nvinfer1::IPluginV3,
                   public nvinfer1::IPluginV3OneCore,
                   public nvinfer1::IPluginV3OneBuild,
                   public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit PluginBase(std::string name) : mName(std::move(name)) {}
    ~PluginBase() override = default;

    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    char const* getPluginVersion() const noexcept override { return kPLUGIN_VERSION; }
    char const* getPluginNamespace() const noexcept override { return kPLUGIN_NAMESPACE; }
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const*, int32_t, nvinfer1::DynamicPluginTensorDesc const*,
        int32_t) noexcept override
    {
        return 0;
    }
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const*, int32_t, nvinfer1::PluginTensorDesc const*,
        int32_t) noexcept override
    {
        return 0;
    }
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext*) noexcept override { return clone(); }

protected:
    std::string mName;
    std::vector<nvinfer1::PluginField> mSerialized;
    nvinfer1::PluginFieldCollection mSerializedFc{};

    nvinfer1::PluginFieldCollection const* publish() noexcept;
};

} // namespace plugin
} // namespace tost_edge
